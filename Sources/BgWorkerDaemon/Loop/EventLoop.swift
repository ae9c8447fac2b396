// The daemon's one event loop (issue 9): a dedicated thread (`bgw-loop`) blocked in epoll_wait
// on every fd the daemon watches (workers' pidfds, later a notify socket and inhibitor fds), one
// timerfd for every deadline (restart delays, stop timeouts, HA role timers, the STATUS=
// throttle), and an eventfd for work handed over from other threads. It is also the Supervisor
// actor's SerialExecutor, so an event that fires here reaches the supervisor on this thread,
// with no hop. Idle, nothing is armed and the thread does not wake. See docs/design.md.
import CShims
import Glibc
import Synchronization

/// A cancellable deadline of an `EventLoop` (see `EventLoop.schedule`).
public struct LoopTimer: Hashable, Sendable {
    fileprivate let sequence: UInt64
}

/// An fd registered with an `EventLoop` (see `EventLoop.register`).
public struct LoopRegistration: Hashable, Sendable {
    fileprivate let token: UInt64
}

/// One thread running epoll, timers and jobs; a `SerialExecutor` for the actor that lives on it.
///
/// Threading: `execute`, `enqueue`, `now`, `advanceClock` and `isOnLoopThread` may be called
/// from any thread. `register`, `unregister`, `schedule` and `cancel` only on the loop thread (a
/// handler, a timer action, a job, or an actor isolated to the loop); they trap elsewhere.
public final class EventLoop: SerialExecutor, @unchecked Sendable {
    // Safety of @unchecked Sendable: the state shared between threads is `queue` (a Mutex),
    // `loopThread`, `manualNow` and `stopRequested` (atomics) and the fds (written in init only).
    // Everything else (`handlers`, `timers`, `heap`, `armedDeadline`, ...) is read and written on
    // the loop thread only: every method touching it starts with `preconditionOnLoopThread()` or
    // is called from `run()`.

    /// A job handed to the loop: a Swift job of the actor isolated to it, or a closure.
    private enum Job {
        case executor(UnownedJob)
        case closure(Closure)
    }
    /// Closures are boxed in a struct before they go into the Mutex (the reabstraction-thunk trap
    /// of Swift 6.3.1, docs/design.md).
    private struct Closure {
        let body: @Sendable () -> Void
    }
    private struct Handler {
        let fd: Int32
        let call: (UInt32) -> Void
    }
    private struct TimerAction {
        let deadline: UInt64
        let body: () -> Void
    }

    public let name: String
    private let epollFD: Int32
    private let wakeFD: Int32
    private let timerFD: Int32
    private let queue = Mutex<[Job]>([])
    private let loopThread = Atomic<UInt>(0)
    private let stopRequested = Atomic<Bool>(false)
    /// false: CLOCK_MONOTONIC. Else time is `manualNow`'s nanoseconds (tests drive it).
    private let isManualClock: Bool
    private let manualNow = Atomic<UInt64>(0)

    private var handlers: [UInt64: Handler] = [:]
    private var nextToken: UInt64 = 2  // 0: the eventfd, 1: the timerfd
    private var timers: [UInt64: TimerAction] = [:]
    /// Min-heap of (deadline, sequence); entries whose sequence left `timers` were cancelled and
    /// are dropped when they reach the top.
    private var heap: [(deadline: UInt64, sequence: UInt64)] = []
    private var nextSequence: UInt64 = 0
    /// The absolute deadline the timerfd is armed for; nil: disarmed.
    private var armedDeadline: UInt64?
    private var stoppedHandlers: [@Sendable () -> Void] = []
    private var iterationHook: (() -> Void)?

    /// Wake-ups of the loop thread (returns from epoll_wait), for the bench and tests.
    public let wakeUps = Atomic<UInt64>(0)

    /// Starts the loop's thread.
    /// - Parameter manualClock: tests: time is `advanceClock`'s, starting at 0, and only
    ///   `advanceClock` fires timers (the timerfd is never armed).
    public init(name: String = "bgw-loop", manualClock: Bool = false) throws(SystemCallError) {
        self.name = name
        isManualClock = manualClock
        epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epollFD >= 0 else { throw SystemCallError(call: "epoll_create1", errno: errno) }
        wakeFD = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        timerFD = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_CLOEXEC | TFD_NONBLOCK))
        guard wakeFD >= 0, timerFD >= 0 else {
            let code = errno
            for fd in [epollFD, wakeFD, timerFD] where fd >= 0 { close(fd) }
            throw SystemCallError(call: wakeFD < 0 ? "eventfd" : "timerfd_create", errno: code)
        }
        for (fd, token) in [(wakeFD, UInt64(0)), (timerFD, UInt64(1))] {
            var event = epoll_event()
            event.events = EPOLLIN.rawValue
            event.data.u64 = token
            guard epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &event) == 0 else {
                let code = errno
                for fd in [epollFD, wakeFD, timerFD] { close(fd) }
                throw SystemCallError(call: "epoll_ctl(ADD)", errno: code)
            }
        }
        // Spawns happen on this thread (PR_SET_PDEATHSIG follows it): it must live as long as
        // the workers, so it is a thread of our own, never one of a pool.
        try startDedicatedThread(name: name, stackSize: 2 << 20) { [self] in run() }
    }

    // MARK: - Any thread

    /// True on the loop's thread.
    public var isOnLoopThread: Bool {
        pthread_equal(pthread_self(), loopThread.load(ordering: .acquiring)) != 0
    }

    public func preconditionOnLoopThread(_ what: @autoclosure () -> String = "",
                                         file: StaticString = #fileID, line: UInt = #line) {
        precondition(isOnLoopThread, "not on the event loop \(name)'s thread \(what())", file: file, line: line)
    }

    /// Runs `body` on the loop thread, after the jobs queued before it. From the loop thread it is
    /// queued too (it runs before the loop waits again), never run nested in the caller.
    public func execute(_ body: @escaping @Sendable () -> Void) {
        submit(.closure(Closure(body: body)))
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        submit(.executor(UnownedJob(job)))
    }

    /// The loop thread is this executor's only thread: code running there (a job, a handler, a
    /// timer action) never runs at the same time as another job of the loop.
    public func checkIsolated() {
        preconditionOnLoopThread("(checkIsolated)")
    }

    public func isIsolatingCurrentContext() -> Bool? { isOnLoopThread }

    /// The loop's time: CLOCK_MONOTONIC nanoseconds, or the manual clock's.
    public func now() -> UInt64 {
        if isManualClock { return manualNow.load(ordering: .acquiring) }
        return monotonicNanoseconds()
    }

    /// Tests (manual clock only): moves time forward and fires what is due, as a loop job: what
    /// is queued after this call sees the timers fired.
    public func advanceClock(by nanoseconds: UInt64) {
        precondition(isManualClock, "advanceClock on a loop with a real clock")
        execute { [self] in
            manualNow.add(nanoseconds, ordering: .releasing)
            fireDueTimers()
        }
    }

    /// Ends the loop thread once the jobs queued before this call have run; then `done` is
    /// called on it. For loops that serve nobody any more (a test's runner); the daemon's loop
    /// lives as long as the process. Nothing may use the loop afterwards (jobs are dropped).
    public func stop(then done: @escaping @Sendable () -> Void = {}) {
        execute { [self] in
            stoppedHandlers.append(done)
            stopRequested.store(true, ordering: .releasing)
        }
    }

    private func submit(_ job: Job) {
        // A stopped loop's fds are closed (their numbers may be reused): nothing is handed over.
        guard !stopRequested.load(ordering: .acquiring) else { return }
        queue.withLock { $0.append(job) }
        // On the loop thread the queue is drained before the next epoll_wait: no wake needed.
        if !isOnLoopThread { signalWake() }
    }

    private func signalWake() {
        var one: UInt64 = 1
        _ = retryOnInterrupt { write(wakeFD, &one, 8) }
    }

    // MARK: - Loop thread only

    /// Calls `handler` on the loop thread with the epoll event mask each time `fd` is ready
    /// (level-triggered). The caller keeps the fd open until `unregister`.
    public func register(
        fd: Int32, events: UInt32 = EPOLLIN.rawValue, _ handler: @escaping (UInt32) -> Void
    ) throws(SystemCallError) -> LoopRegistration {
        preconditionOnLoopThread("(register)")
        let token = nextToken
        nextToken += 1
        var event = epoll_event()
        event.events = events
        event.data.u64 = token
        guard epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &event) == 0 else {
            throw SystemCallError(call: "epoll_ctl(ADD)", errno: errno)
        }
        handlers[token] = Handler(fd: fd, call: handler)
        return LoopRegistration(token: token)
    }

    /// Calls `hook` each time the loop wakes, before it handles what woke it (nil: none).
    public func setIterationHook(_ hook: (() -> Void)?) {
        preconditionOnLoopThread("(setIterationHook)")
        iterationHook = hook
    }

    /// Stops watching; an event of this round for it is dropped. Close the fd afterwards.
    public func unregister(_ registration: LoopRegistration) {
        preconditionOnLoopThread("(unregister)")
        guard let handler = handlers.removeValue(forKey: registration.token) else { return }
        _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, handler.fd, nil)
    }

    /// Runs `action` on the loop thread once `now()` reaches `deadline`; timers due at the same
    /// time run in the order scheduled.
    @discardableResult
    public func schedule(at deadline: UInt64, _ action: @escaping () -> Void) -> LoopTimer {
        preconditionOnLoopThread("(schedule)")
        nextSequence += 1
        timers[nextSequence] = TimerAction(deadline: deadline, body: action)
        heapPush((deadline, nextSequence))
        return LoopTimer(sequence: nextSequence)
    }

    @discardableResult
    public func schedule(after delay: Duration, _ action: @escaping () -> Void) -> LoopTimer {
        schedule(at: now() &+ UInt64(max(nanoseconds(delay), 0)), action)
    }

    /// Takes back a timer; false when it ran already (or was cancelled).
    @discardableResult
    public func cancel(_ timer: LoopTimer) -> Bool {
        preconditionOnLoopThread("(cancel)")
        guard timers.removeValue(forKey: timer.sequence) != nil else { return false }
        // A cancelled entry leaves the heap only at its top: ones far in the future (a notify
        // worker moving its watchdog deadline ever earlier) would pile up. Dropping them all once
        // they are half the heap costs O(log n) a cancel, amortized.
        if heap.count > 64, heap.count > 2 * timers.count {
            heap = heap.filter { timers[$0.sequence] != nil }.sorted(by: Self.before)  // sorted: a valid heap
        }
        return true
    }

    /// Heap entries, cancelled ones not yet dropped included (tests).
    var heapEntries: Int {
        preconditionOnLoopThread("(heapEntries)")
        return heap.count
    }

    /// Timers pending (tests).
    public var pendingTimers: Int {
        preconditionOnLoopThread("(pendingTimers)")
        return timers.count
    }

    // MARK: - The thread

    private func run() {
        loopThread.store(pthread_self(), ordering: .releasing)
        var ready = [epoll_event](repeating: epoll_event(), count: 64)
        while true {
            runJobs()
            if stopRequested.load(ordering: .acquiring) { break }
            armTimer()
            let count = ready.withUnsafeMutableBufferPointer { events in
                retryOnInterrupt { epoll_wait(epollFD, events.baseAddress, Int32(events.count), -1) }
            }
            wakeUps.add(1, ordering: .relaxed)
            iterationHook?()
            for event in ready[0..<max(Int(count), 0)] {
                switch event.data.u64 {
                case 0: drain(wakeFD)
                case 1: drain(timerFD); armedDeadline = nil
                case let token: handlers[token]?.call(event.events)
                }
            }
            fireDueTimers()
        }
        let done = stoppedHandlers
        for fd in [epollFD, wakeFD, timerFD] { close(fd) }
        done.forEach { $0() }
    }

    private func runJobs() {
        let me = asUnownedSerialExecutor()
        while true {
            let batch = queue.withLock { queue -> [Job] in defer { queue = [] }; return queue }
            if batch.isEmpty { return }
            for job in batch {
                switch job {
                case .executor(let job): job.runSynchronously(on: me)
                case .closure(let closure): closure.body()
                }
            }
        }
    }

    private func fireDueTimers() {
        let now = now()
        while let top = heap.first, top.deadline <= now {
            heapPop()
            guard let timer = timers.removeValue(forKey: top.sequence) else { continue }
            timer.body()
        }
    }

    /// Arms the timerfd for the earliest live deadline (cancelled ones at the top are dropped
    /// first, so a cancelled timer never wakes the loop).
    private func armTimer() {
        while let top = heap.first, timers[top.sequence] == nil { heapPop() }
        guard !isManualClock else { return }
        let wanted = heap.first?.deadline
        guard wanted != armedDeadline else { return }
        var spec = itimerspec()
        if let wanted {
            // 0 would disarm: a deadline in the past fires at once as 1 ns.
            let value = max(wanted, 1)
            spec.it_value = timespec(tv_sec: Int(value / 1_000_000_000), tv_nsec: Int(value % 1_000_000_000))
        }
        if timerfd_settime(timerFD, Int32(TFD_TIMER_ABSTIME), &spec, nil) == 0 {
            armedDeadline = wanted
        }
    }

    private func drain(_ fd: Int32) {
        var value: UInt64 = 0
        _ = read(fd, &value, 8)
    }

    private func heapPush(_ entry: (deadline: UInt64, sequence: UInt64)) {
        heap.append(entry)
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard Self.before(heap[child], heap[parent]) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    private func heapPop() {
        let last = heap.removeLast()
        guard !heap.isEmpty else { return }
        heap[0] = last
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < heap.count, Self.before(heap[left], heap[smallest]) { smallest = left }
            if right < heap.count, Self.before(heap[right], heap[smallest]) { smallest = right }
            if smallest == parent { return }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
    }

    private static func before(_ a: (deadline: UInt64, sequence: UInt64), _ b: (deadline: UInt64, sequence: UInt64)) -> Bool {
        (a.deadline, a.sequence) < (b.deadline, b.sequence)
    }
}


extension EventLoop {
    private static let sharedLoop = Mutex<EventLoop?>(nil)

    /// The process's loop: the daemon's (`makeShared`), else one made on first use (tests,
    /// tools, runners made without a loop). It lives as long as the process, so
    /// PR_SET_PDEATHSIG of what it spawns holds.
    public static var shared: EventLoop {
        sharedLoop.withLock { shared in
            if let shared { return shared }
            do {
                let loop = try EventLoop(name: "bgw-loop")
                shared = loop
                return loop
            } catch {
                // Only without a free fd or thread, at the first use in a tool or a test.
                fatalError("cannot start an event loop: \(error)")
            }
        }
    }

    /// The daemon: makes the process's loop (before anything uses `shared`).
    public static func makeShared(name: String = "bgw-loop") throws(SystemCallError) -> EventLoop {
        let loop = try EventLoop(name: name)
        sharedLoop.withLock { $0 = $0 ?? loop }
        return shared
    }

    /// Sleeps until `deadline` of `now()` on a loop timer (what tasks off the loop use instead
    /// of `Task.sleep`, which asks libdispatch for a timer in Swift 6.3 and so wakes an idle
    /// daemon). Throws `CancellationError` at once when the task is cancelled.
    public func sleep(until deadline: UInt64) async throws {
        let sleeper = LoopSleeper()
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                guard sleeper.begin(continuation) else { return }
                execute { [self] in
                    let timer = schedule(at: deadline) { sleeper.finish(nil) }
                    // Cancelled meanwhile: take the timer back, so it never wakes the loop.
                    if !sleeper.armed(timer) { cancel(timer) }
                }
            }
        } onCancel: {
            if let timer = sleeper.finish(CancellationError()) {
                execute { [self] in cancel(timer) }
            }
        }
    }

    public func sleep(for duration: Duration) async throws {
        try await sleep(until: now() &+ UInt64(max(nanoseconds(duration), 0)))
    }
}

/// One loop sleep: resumed exactly once, by its timer or by its cancellation.
private final class LoopSleeper: Sendable {
    private struct State {
        var continuation: CheckedContinuation<Void, any Error>?
        var timer: LoopTimer?
        var done = false
    }
    private let state = Mutex(State())

    /// false: cancelled already (then resumed here).
    func begin(_ continuation: CheckedContinuation<Void, any Error>) -> Bool {
        let cancelled = state.withLock { state -> Bool in
            if state.done { return true }
            state.continuation = continuation
            return false
        }
        if cancelled { continuation.resume(throwing: CancellationError()) }
        return !cancelled
    }

    /// On the loop: false when the sleep ended meanwhile (the caller cancels the timer).
    func armed(_ timer: LoopTimer) -> Bool {
        state.withLock { state in
            guard !state.done else { return false }
            state.timer = timer
            return true
        }
    }

    /// Resumes the sleeper (an error: cancelled); returns the timer to take back, if any.
    @discardableResult
    func finish(_ error: (any Error)?) -> LoopTimer? {
        let (continuation, timer) = state.withLock { state -> (CheckedContinuation<Void, any Error>?, LoopTimer?) in
            guard !state.done else { return (nil, nil) }
            state.done = true
            defer { state.continuation = nil }
            return (state.continuation, state.timer)
        }
        if let error { continuation?.resume(throwing: error) } else { continuation?.resume() }
        return error == nil ? nil : timer
    }
}
