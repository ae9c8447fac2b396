// The daemon's event loop (Loop/EventLoop.swift): jobs, timers, fds, and the executor checks the
// supervisor's one `assumeIsolated` relies on.
import Dispatch
import Foundation
import Glibc
import Synchronization
import TestSupport
import Testing

@testable import BgWorkerDaemon

/// Runs `body` on the loop thread and returns its result.
private func onLoop<T: Sendable>(_ loop: EventLoop, _ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in loop.execute { continuation.resume(returning: body()) } }
}

/// An actor on the loop, entered from loop handlers the way the supervisor is.
private actor LoopBound {
    let loop: EventLoop
    nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }
    var seen: [String] = []
    init(loop: EventLoop) { self.loop = loop }
    nonisolated func fromLoop(_ what: String) { assumeIsolated { $0.seen.append(what) } }
    func record(_ what: String) { seen.append(what) }
    func onLoopThread() -> Bool { loop.isOnLoopThread }
}

/// A task executor with one thread of its own that counts the jobs it has run: once it has run
/// every job it was given, each task that prefers it has reached a suspension.
private final class CountingTaskExecutor: TaskExecutor {
    private let jobs = Mutex<[UnownedJob]>([])
    private let available = DispatchSemaphore(value: 0)
    /// Jobs run to their end, and jobs given and not yet run.
    let progress = WatchedValue<(done: Int, waiting: Int)>((0, 0))

    init() {
        let thread = Thread { [self] in run() }
        thread.start()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        jobs.withLock { $0.append(job) }
        progress.update { $0.waiting += 1 }
        available.signal()
    }

    /// The thread lives as long as the test process (a few parked threads, one per test).
    private func run() {
        while true {
            available.wait()
            let job = jobs.withLock { $0.removeFirst() }
            job.runSynchronously(on: asUnownedTaskExecutor())
            progress.update { $0.done += 1; $0.waiting -= 1 }
        }
    }
}

@Suite struct LoopTests {
    @Test func jobsFromOtherThreadsRunOnTheLoopInOrder() async throws {
        let loop = try EventLoop(name: "test-loop")
        let order = Mutex<[Int]>([])
        let (done, finished) = AsyncStream.makeStream(of: Bool.self)
        for index in 0..<100 {
            loop.execute {
                order.withLock { $0.append(index) }
                if index == 99 { finished.yield(loop.isOnLoopThread) }
            }
        }
        let onLoop = try await waitFor("the last job", in: done, timeout: .seconds(10)) { _ in true }
        #expect(onLoop)
        #expect(order.withLock { $0 } == Array(0..<100))
        loop.stop()
    }

    @Test func theIterationHookRunsOnceAtEachWakeUntilRemoved() async throws {
        let loop = try EventLoop(name: "test-loop")
        let calls = Mutex<UInt64>(0)
        @Sendable func wakeUps() -> UInt64 { loop.wakeUps.load(ordering: .relaxed) }
        // A timer's expiry is a wake-up for sure (a job queued from here may run before the loop
        // sleeps); its action runs after the hook of that wake-up.
        func wokenByATimer() async {
            await withCheckedContinuation { done in loop.execute { _ = loop.schedule(after: .milliseconds(1)) { done.resume() } } }
        }
        let base = await onLoop(loop) {
            loop.setIterationHook { calls.withLock { $0 += 1 } }
            return wakeUps()
        }
        for _ in 0..<3 { await wokenByATimer() }
        let (seen, wakes) = await onLoop(loop) { (calls.withLock { $0 }, wakeUps() - base) }
        #expect(wakes >= 3)
        #expect(seen == wakes, "once at each wake-up")
        let (before, removedAt) = await onLoop(loop) {
            loop.setIterationHook(nil)
            return (calls.withLock { $0 }, wakeUps())
        }
        await wokenByATimer()
        #expect(wakeUps() > removedAt)
        #expect(calls.withLock { $0 } == before, "removed: not called again")
        loop.stop()
    }

    @Test func aJobQueuedFromTheLoopRunsAfterTheCurrentOneNotInsideIt() async throws {
        let loop = try EventLoop(name: "test-loop")
        let steps = await onLoop(loop) { () -> [String] in
            let steps = Mutex<[String]>(["outer begins"])
            loop.execute { steps.withLock { $0.append("inner") } }
            steps.withLock { $0.append("outer ends") }
            return steps.withLock { $0 }
        }
        #expect(steps == ["outer begins", "outer ends"])
        loop.stop()
    }

    /// A notify worker sending WATCHDOG_USEC= ever smaller (from huge) moves its deadline earlier
    /// with each message: the runner cancels its timer and schedules an earlier one. The cancelled
    /// entries lie far in the future, below the heap's top: they must not pile up (they did, one
    /// per message, until their deadline passed; days for a hostile worker).
    @Test func timersCancelledFarInTheFutureDoNotPileUp() async throws {
        let loop = try EventLoop(name: "test-loop", manualClock: true)
        let entries = await onLoop(loop) {
            var timer = loop.schedule(at: UInt64(Int64.max)) {}
            for step in 1...100_000 {
                loop.cancel(timer)
                timer = loop.schedule(at: UInt64(Int64.max) - UInt64(step)) {}
            }
            return (loop.heapEntries, loop.pendingTimers)
        }
        #expect(entries.1 == 1)
        #expect(entries.0 <= 128, "\(entries.0) heap entries for 1 live timer")
        loop.stop()
    }

    @Test func timersFireInDeadlineOrderAndACancelledOneNever() async throws {
        let loop = try EventLoop(name: "test-loop", manualClock: true)
        let fired = Mutex<[String]>([])
        await onLoop(loop) {
            loop.schedule(at: 300) { fired.withLock { $0.append("c") } }
            loop.schedule(at: 100) { fired.withLock { $0.append("a") } }
            let cancelled = loop.schedule(at: 200) { fired.withLock { $0.append("cancelled") } }
            loop.schedule(at: 200) { fired.withLock { $0.append("b") } }
            #expect(loop.cancel(cancelled))
        }
        loop.advanceClock(by: 250)
        #expect(await onLoop(loop) { fired.withLock { $0 } } == ["a", "b"])
        loop.advanceClock(by: 100)
        #expect(await onLoop(loop) { fired.withLock { $0 } } == ["a", "b", "c"])
        #expect(await onLoop(loop) { loop.pendingTimers } == 0)
        loop.stop()
    }

    @Test func aRealTimerFiresOnTheLoopThread() async throws {
        let loop = try EventLoop(name: "test-loop")
        let (fired, fire) = AsyncStream.makeStream(of: Bool.self)
        await onLoop(loop) {
            loop.schedule(after: .milliseconds(20)) { fire.yield(loop.isOnLoopThread) }
        }
        #expect(try await waitFor("the timer", in: fired, timeout: .seconds(10)) { _ in true })
        loop.stop()
    }

    @Test func aRegisteredFdsHandlerRunsOnTheLoopUntilUnregistered() async throws {
        let loop = try EventLoop(name: "test-loop")
        let event = try EventFD()
        let fd = event.fd
        let (calls, call) = AsyncStream.makeStream(of: Bool.self)
        let registration = try await onLoop(loop) { () -> Result<LoopRegistration, SystemCallError> in
            Result { () throws(SystemCallError) in
                try loop.register(fd: fd) { _ in
                    var value: UInt64 = 0
                    _ = read(fd, &value, 8)
                    call.yield(loop.isOnLoopThread)
                }
            }
        }.get()
        event.signal()
        #expect(try await waitFor("the handler", in: calls, timeout: .seconds(10)) { _ in true })
        await onLoop(loop) { loop.unregister(registration) }
        loop.stop()
    }

    @Test func aSleepEndsAtItsDeadlineAndACancelledOneAtOnceTakingItsTimerBack() async throws {
        let loop = try EventLoop(name: "test-loop", manualClock: true)
        // The sleeps run on an executor that says when it has run all it was given: then both
        // have handed their timer to the loop (a job queued before they suspend), so the next
        // job of the loop sees both timers armed.
        let executor = CountingTaskExecutor()
        let sleeping = Task(executorPreference: executor) { try await loop.sleep(until: 1_000) }
        let cancelled = Task(executorPreference: executor) { try await loop.sleep(until: 5_000) }
        try await executor.progress.wait("both sleeps begun") { $0.done >= 2 && $0.waiting == 0 }
        #expect(await onLoop(loop) { loop.pendingTimers } == 2)
        cancelled.cancel()
        await #expect(throws: CancellationError.self) { try await cancelled.value }
        loop.advanceClock(by: 1_000)
        try await sleeping.value
        #expect(await onLoop(loop) { loop.pendingTimers } == 0, "the cancelled sleep's timer was taken back")
        loop.stop()
    }

    /// The supervisor's one `assumeIsolated` (Supervisor.onLoop) is sound only if the loop's code
    /// runs on the actor's executor: a handler entering the actor sees the actor's own state, and
    /// the actor's methods run on the loop thread.
    @Test func anActorOnTheLoopIsEnteredFromALoopHandler() async throws {
        let loop = try EventLoop(name: "test-loop")
        let bound = LoopBound(loop: loop)
        #expect(await bound.onLoopThread())
        await bound.record("job")
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            loop.execute {
                bound.fromLoop("handler")
                continuation.resume()
            }
        }
        #expect(await bound.seen == ["job", "handler"])
        loop.stop()
    }

    /// And it traps anywhere else, rather than running the actor's code beside its jobs.
    @Test func enteringTheLoopsActorOffTheLoopTraps() async {
        await #expect(processExitsWith: .failure) {
            let loop = try EventLoop(name: "test-loop")
            LoopBound(loop: loop).fromLoop("not the loop")
        }
        await #expect(processExitsWith: .failure) {
            try EventLoop(name: "test-loop").checkIsolated()
        }
    }
}
