import BgWorkerAPI
@testable import BgWorkerDaemon
import Glibc
import Testing
import TestSupport

/// The in-memory output buffers and their followers (`FollowLogs`), in-process, so that the
/// sanitizer runs cover the lock and the sockets.
@Suite("WorkerLogBuffers: buffers and followers")
struct WorkerLogBuffersTests {
    /// Reads one record without waiting; nil when none is queued, or at the end of the stream
    /// (`ended` is then set).
    static func record(_ fd: Int32, ended: inout Bool) -> FollowedLogRecord? {
        var buffer = [UInt8](repeating: 0, count: 65536)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if n == 0 { ended = true }
        return n > 0 ? FollowedLogRecord(decoding: buffer[0..<n]) : nil
    }

    @Test func aFollowerGetsTheBacklogThenEveryLineOrItsCountUntilTheWorkerGoes() async throws {
        let buffers = WorkerLogBuffers()
        buffers.configure(["w": 3, "other": 3])
        for i in 1...5 { buffers.append(worker: "w", text: "old \(i)") }
        let fd = try buffers.follow("w", last: 2)
        defer { close(fd) }
        var ended = false
        #expect(Self.record(fd, ended: &ended)?.text == "old 4")
        #expect(Self.record(fd, ended: &ended)?.text == "old 5")
        #expect(Self.record(fd, ended: &ended) == nil && !ended)

        // 20,000 lines from the pump's thread while other followers come and go on this one:
        // the reader does not read meanwhile, so most are dropped, and each is counted.
        let writer = Task.detached { for i in 1...20_000 { buffers.append(worker: "w", text: "new \(i)") } }
        for _ in 0..<200 {
            let other = try buffers.follow("other", last: 1)
            buffers.append(worker: "other", text: "x")
            close(other)
        }
        await writer.value
        buffers.append(worker: "w", text: "last")
        var received = 0, dropped = 0
        while let record = Self.record(fd, ended: &ended) {
            received += 1
            dropped += Int(record.dropped)
        }
        // Lines lost at the end are counted in the next record that gets through.
        buffers.append(worker: "w", text: "final")
        let final = try #require(Self.record(fd, ended: &ended))
        #expect(final.text == "final")
        #expect(received > 0 && received + dropped + Int(final.dropped) == 20_001, "\(received) + \(dropped) + \(final.dropped)")

        // Removed by a Reload: the stream ends. Waited for: a test running beside this one may
        // fork, and its child holds a copy of the daemon's end until it execs (CLOEXEC).
        buffers.configure(["other": 3])
        var readable = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        _ = poll(&readable, 1, 10_000)
        _ = Self.record(fd, ended: &ended)
        #expect(ended)
    }

    /// A backlog larger than the socket holds (300 lines of 3 KB: ~50 fit) gave the oldest lines
    /// that fit and lost the newest, uncounted while the worker stayed silent
    /// (scripts/adversarial/follow_logs.py). The reader gets the newest that fit, the first
    /// record counting the older ones, and then each new line.
    @Test func aBacklogLargerThanTheSocketKeepsItsNewestLinesAndCountsTheOthers() throws {
        let buffers = WorkerLogBuffers()
        buffers.configure(["w": 300])
        let pad = String(repeating: "x", count: 3000)
        for i in 0..<300 { buffers.append(worker: "w", text: "line \(i) \(pad)") }
        var fds: [Int32] = []
        defer { fds.forEach { close($0) } }
        var ended = false
        for asked in [300, Int(UInt32.max), 120] {
            let fd = try buffers.follow("w", last: asked)
            fds.append(fd)
            var records: [FollowedLogRecord] = []
            while let record = Self.record(fd, ended: &ended) { records.append(record) }
            let expected = min(asked, 300)
            let first = try #require(records.first)
            // ~50 fit with the default net.core.wmem_default (212,992); all of them where it is ~1 MB.
            #expect(records.count > 10 && records.count <= expected, "\(records.count) of \(expected) fit")
            #expect(records.last?.text == "line 299 \(pad)", "asked \(asked): ends with \(records.last?.text.prefix(12) ?? "nothing")")
            #expect(first.text.hasPrefix("line \(300 - records.count) "), "\(first.text.prefix(12))")
            #expect(Int(first.dropped) + records.count == expected, "\(first.dropped) + \(records.count)")
            #expect(records.dropFirst().allSatisfy { $0.dropped == 0 })
        }
        // Then each new line, nothing counted as lost before it.
        buffers.append(worker: "w", text: "new")
        for fd in fds {
            let next = Self.record(fd, ended: &ended)
            #expect(next?.text == "new" && next?.dropped == 0)
        }
    }

    @Test func atMostMaxFollowersAndAClosedOneFreesItsPlace() throws {
        let buffers = WorkerLogBuffers()
        buffers.configure(["w": 1])
        var fds = try (0..<WorkerLogBuffers.maxFollowers).map { _ in try buffers.follow("w", last: 0) }
        defer { fds.forEach { close($0) } }
        #expect(throws: WorkerLogBuffers.FollowError.tooManyFollowers) { try buffers.follow("w", last: 0) }
        close(fds.removeLast())
        // A test running beside this one may be spawning a child, which holds a copy of the closed
        // end until it execs: until then the daemon's end sees no hang-up. Retried until it does.
        let deadline = ContinuousClock.now + .seconds(10)
        var made: Int32?
        while made == nil {
            do {
                made = try buffers.follow("w", last: 0)
            } catch {
                guard error == .tooManyFollowers, ContinuousClock.now < deadline else { throw error }
                sched_yield()
            }
        }
        let again = try #require(made)
        fds.append(again)
        buffers.append(worker: "w", text: "hello")
        var ended = false
        #expect(Self.record(again, ended: &ended)?.text == "hello")
    }
}
