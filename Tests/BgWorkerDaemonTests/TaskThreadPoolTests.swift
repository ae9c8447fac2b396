// The task pool that replaces libdispatch as the daemon's global executor
// (System/TaskThreadPool.swift): its queue and timers, tested on a pool of its own (not
// installed), and its installation, tested in child processes (exit tests).
import Glibc
import Synchronization
import TestSupport
import Testing

@testable import BgWorkerDaemon

@Suite struct TaskThreadPoolTests {
    @Test func scheduledActionsRunInDeadlineOrderNeverEarlyAndACancelledOneNever() async throws {
        let pool = try TaskThreadPool(threads: 1, name: "test-pool")
        let (ran, report) = AsyncStream.makeStream(of: (String, Bool).self)
        let start = monotonicNanoseconds()
        func at(_ milliseconds: UInt64, _ label: String) -> UInt64 {
            pool.schedule(after: milliseconds * 1_000_000) {
                report.yield((label, monotonicNanoseconds() >= start + milliseconds * 1_000_000))
            }
        }
        _ = at(30, "c")
        _ = at(10, "a")
        let cancelled = at(20, "cancelled")
        _ = at(20, "b")
        #expect(pool.cancel(cancelled))
        var seen: [String] = []
        for await (label, notEarly) in ran {
            #expect(notEarly, "\(label) ran before its deadline")
            seen.append(label)
            if seen.count == 3 { break }
        }
        #expect(seen == ["a", "b", "c"])
        #expect(!pool.cancel(cancelled), "cancelled once only")
    }

    @Test func actionsRunInTheOrderGiven() async throws {
        let pool = try TaskThreadPool(threads: 1, name: "test-pool")
        let order = Mutex<[Int]>([])
        let (done, finish) = AsyncStream.makeStream(of: Void.self)
        for index in 0..<50 {
            pool.run {
                order.withLock { $0.append(index) }
                if index == 49 { finish.yield() }
            }
        }
        _ = try await waitFor("the 50th action", in: done, timeout: .seconds(10)) { _ in true }
        #expect(order.withLock { $0 } == Array(0..<50))
    }

    /// Installed once; a second installation (hooks set already, as by another library) changes
    /// nothing and says why; tasks and a delayed job (`Task.sleep(nanoseconds:)`, the runtime's
    /// enqueue-with-delay hook) then run on the pool's threads.
    @Test func theHooksAreTakenOnlyWhenFree() async {
        await #expect(processExitsWith: .success) {
            guard try TaskThreadPool.installAsGlobalExecutor(threads: 2) == .installed else { exit(1) }
            guard case .notInstalled = try TaskThreadPool.installAsGlobalExecutor(threads: 2) else { exit(2) }
            let name = await Task.detached { () -> String in
                try? await Task.sleep(nanoseconds: 5_000_000)
                // The thread's name, as the kernel knows it.
                let path = "/proc/thread-self/comm"
                guard let file = fopen(path, "r") else { return "" }
                defer { fclose(file) }
                var buffer = [CChar](repeating: 0, count: 32)
                guard fgets(&buffer, 32, file) != nil else { return "" }
                return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }.value
            exit(name.hasPrefix("bgw-task-") ? 0 : 3)
        }
    }
}
