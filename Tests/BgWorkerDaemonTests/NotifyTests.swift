import Foundation
import Glibc
import Synchronization
import TestSupport
import Testing

@testable import BgWorkerDaemon

/// A unix datagram socket bound in a fresh directory: what systemd listens on as NOTIFY_SOCKET.
private final class NotifySocket: Sendable {
    let path: String
    private let fd: Int32
    private let open = Atomic(true)
    private let directory: TemporaryDirectory

    /// `abstract`: bound at an abstract name instead, "@name" as NOTIFY_SOCKET gives it.
    init(abstract: Bool = false) throws {
        directory = try TemporaryDirectory()
        path = abstract ? "@bgw-notify-test-\(UInt64.random(in: 0...UInt64.max))" : directory.file("notify")
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestProcessError("socket: \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
            if abstract { raw[0] = 0 }
        }
        // An abstract name is exactly its bytes: no terminating NUL in the length.
        let length = abstract ? MemoryLayout<sa_family_t>.size + path.utf8.count : MemoryLayout<sockaddr_un>.size
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(length)) }
        }
        guard rc == 0 else { throw TestProcessError("bind \(path): \(errno)") }
    }

    deinit {
        close()
        directory.remove()
    }

    /// Closes the socket, leaving its file: what a manager that went away leaves behind.
    func close() {
        if open.exchange(false, ordering: .relaxed) { Glibc.close(fd) }
    }

    /// The next datagram, waiting for it up to `timeout`.
    func receive(timeout: Duration = .seconds(5)) async throws -> String {
        let fd = self.fd
        let ms = Int32(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        let message: String? = await onThread {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, ms) > 0 else { return nil }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            return n < 0 ? nil : String(decoding: buffer[0..<n], as: UTF8.self)
        }
        guard let message else { throw TestProcessError("no datagram on \(path) within \(timeout)") }
        return message
    }

    /// The next datagram that contains `marker` (other tests of this process may send too).
    func receive(containing marker: String) async throws -> String {
        while true {
            let message = try await receive()
            if message.contains(marker) { return message }
        }
    }
}

/// Sets an environment variable for the duration of `body`. The environment is the process's:
/// the suite is serialized, and only these tests set these variables.
private func withEnvironment<T>(_ values: [String: String], _ body: () async throws -> T) async rethrows -> T {
    for (key, value) in values { setenv(key, value, 1) }
    defer { for key in values.keys { unsetenv(key) } }
    return try await body()
}

@Suite("sd_notify", .serialized)
struct NotifyTests {
    @Test func stateChangesReachTheNotifySocket() async throws {
        let socket = try NotifySocket()
        let marker = "marker-\(UInt64.random(in: 0...UInt64.max))"
        let notifier = ServiceNotifier()
        let before = ServiceNotifier.monotonicMicroseconds()
        try await withEnvironment(["NOTIFY_SOCKET": socket.path]) {
            #expect(notifier.ready(status: "ready \(marker)") > 0)
            #expect(try await socket.receive(containing: marker) == "READY=1\nSTATUS=ready \(marker)")

            notifier.reloading(status: "reloading \(marker)")
            let reloading = try await socket.receive(containing: marker).split(separator: "\n")
            #expect(reloading.count == 3)
            #expect(reloading.first == "RELOADING=1")
            #expect(reloading.last == "STATUS=reloading \(marker)")
            let stamp = try #require(reloading.dropFirst().first.flatMap { UInt64($0.dropFirst("MONOTONIC_USEC=".count)) })
            #expect(stamp >= before && stamp <= ServiceNotifier.monotonicMicroseconds())

            notifier.status("two\nlines \(marker)")
            #expect(try await socket.receive(containing: marker) == "STATUS=two lines \(marker)")
            notifier.stopping(status: "stopping \(marker)")
            #expect(try await socket.receive(containing: marker) == "STOPPING=1\nSTATUS=stopping \(marker)")
        }
    }

    /// systemd re-executed: its socket is made anew at the same path and the old one is closed,
    /// so a send on the old connection is refused. The message goes to the new one all the same.
    @Test func aSocketMadeAnewAtTheSamePathGetsTheNextMessage() async throws {
        let old = try NotifySocket()
        let new = try NotifySocket()
        let marker = "marker-\(UInt64.random(in: 0...UInt64.max))"
        let notifier = ServiceNotifier()
        try await withEnvironment(["NOTIFY_SOCKET": old.path]) { () async throws in
            #expect(notifier.status("old \(marker)") > 0)
            #expect(try await old.receive(containing: marker) == "STATUS=old \(marker)")
            old.close()
            #expect(rename(new.path, old.path) == 0)
            #expect(notifier.status("new \(marker)") > 0)
            #expect(try await new.receive(containing: marker) == "STATUS=new \(marker)")
        }
    }

    @Test func anAbstractNameIsReachedAndAnOverlongOneRefused() async throws {
        let socket = try NotifySocket(abstract: true)
        let marker = "marker-\(UInt64.random(in: 0...UInt64.max))"
        try await withEnvironment(["NOTIFY_SOCKET": socket.path]) { () async throws in
            #expect(ServiceNotifier().status(marker) > 0)
            #expect(try await socket.receive(containing: marker) == "STATUS=\(marker)")
        }
        await withEnvironment(["NOTIFY_SOCKET": "@" + String(repeating: "x", count: 107)]) {
            #expect(ServiceNotifier().status(marker) == -ENAMETOOLONG)
        }
    }

    @Test(.enabled(if: getenv("NOTIFY_SOCKET") == nil, "the test runner itself runs under a NOTIFY_SOCKET"))
    func withoutANotifySocketNothingIsSent() {
        #expect(ServiceNotifier().ready() == 0)
    }

    @Test func theWatchdogIntervalComesFromTheEnvironmentForThisProcessOnly() async {
        await withEnvironment(["WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "\(getpid())"]) {
            #expect(ServiceNotifier.watchdogInterval() == .seconds(3))
        }
        await withEnvironment(["WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"]) {
            #expect(ServiceNotifier.watchdogInterval() == nil, "meant for another process")
        }
        #expect(ServiceNotifier.watchdogInterval() == nil)
        #expect(WatchdogService(interval: nil) == nil)
    }

    @Test func theWatchdogIsFedAtHalfTheInterval() async throws {
        let socket = try NotifySocket()
        try await withEnvironment(["NOTIFY_SOCKET": socket.path]) {
            let watchdog = try #require(WatchdogService(interval: .milliseconds(400)))
            let clock = ContinuousClock()
            let started = clock.now
            let task = Task { try await watchdog.run() }
            // One keep-alive at once, then one every 200 ms: the third comes 400 ms after the start.
            for _ in 0..<3 { #expect(try await socket.receive(containing: "WATCHDOG=1") == "WATCHDOG=1") }
            let took = clock.now - started
            // Not faster than half the interval; the ceiling only catches a watchdog that stalls.
            #expect(took >= .milliseconds(400) && took < .seconds(5), "three keep-alives took \(took)")
            task.cancel()
            try await task.value
        }
    }
}
