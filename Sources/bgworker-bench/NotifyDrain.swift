// The daemon's NOTIFY_SOCKET, read continuously by a thread of its own, as systemd reads it.
//
// Why not TestSupport's NotifySocket: it is read on demand, one message per call (a thread per
// wait). bgworkerd sends a STATUS= on every change of its status line, i.e. about two per worker
// while 1,000 workers start; nobody reading them filled the datagram queue (net.unix.max_dgram_qlen,
// 512 here) and the daemon's supervisor then blocked in sd_notify's sendmsg for good. This reader
// drains every message at once and counts them; READY=1 is timestamped on arrival.
import CDBus
import Foundation
import Glibc
import SystemSupport
import Synchronization
import TestSupport

final class NotifyDrain: Sendable {
    /// The value for `NOTIFY_SOCKET` (an abstract socket).
    let address: String
    private let fd: Int32
    private struct State {
        var messages = 0
        var statusMessages = 0
        var readyAt: UInt64?
        var waiters: [UInt64: CheckedContinuation<UInt64, Never>] = [:]
        var nextID: UInt64 = 0
        /// -1 once closed (see `close`): the thread and `close` race on it.
        var wakeFD: Int32
    }
    private let state: Mutex<State>

    init() throws {
        let name = "bgw-bench-notify-\(uniqueID(12))"
        address = "@" + name
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        self.fd = fd
        guard fd >= 0 else { throw BenchError("socket(AF_UNIX, SOCK_DGRAM): \(errno)") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = [UInt8(0)] + Array(name.utf8)  // abstract: a leading NUL, no terminator
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        let wake = eventfd(0, Int32(EFD_CLOEXEC))
        guard rc == 0, wake >= 0 else {
            Glibc.close(fd)
            throw BenchError("notify socket \(address): \(String(cString: strerror(errno)))")
        }
        state = Mutex(State(wakeFD: wake))
        let thread = Thread { [self] in drain(wake: wake) }
        thread.name = "bench-notify"
        thread.start()
    }

    /// Messages received so far, and how many of them carried STATUS=.
    var counts: (messages: Int, status: Int) { state.withLock { ($0.messages, $0.statusMessages) } }

    /// When READY=1 arrived; waits for it (no deadline: the caller races it against the
    /// daemon's exit). Cancelling the wait returns 0.
    func ready() async -> UInt64 {
        let id = state.withLock { s -> UInt64 in s.nextID += 1; return s.nextID }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let at = state.withLock { s -> UInt64? in
                    if let at = s.readyAt { return at }
                    if Task.isCancelled { return 0 }
                    s.waiters[id] = continuation
                    return nil
                }
                if let at { continuation.resume(returning: at) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume(returning: 0)
        }
    }

    /// Stops the thread; it closes the sockets.
    func close() {
        state.withLock { s in
            guard s.wakeFD >= 0 else { return }
            var one: UInt64 = 1
            _ = write(s.wakeFD, &one, 8)
        }
    }

    private func drain(wake: Int32) {
        defer {
            state.withLock { s in
                Glibc.close(s.wakeFD)
                s.wakeFD = -1
            }
            Glibc.close(fd)
        }
        var buffer = [UInt8](repeating: 0, count: 4096)
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
        while true {
            fds[0].revents = 0
            fds[1].revents = 0
            if poll(&fds, 2, -1) < 0 {
                if errno == EINTR { continue }
                return
            }
            if fds[1].revents != 0 { return }
            // Everything queued, without waiting in between (MSG_DONTWAIT).
            while true {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                if n <= 0 { break }
                let at = monotonicNanoseconds()
                let text = String(decoding: buffer[0..<n], as: UTF8.self)
                let lines = text.split(separator: "\n")
                let woken = state.withLock { s -> [CheckedContinuation<UInt64, Never>] in
                    s.messages += 1
                    if lines.contains(where: { $0.hasPrefix("STATUS=") }) { s.statusMessages += 1 }
                    guard s.readyAt == nil, lines.contains("READY=1") else { return [] }
                    s.readyAt = at
                    defer { s.waiters = [:] }
                    return Array(s.waiters.values)
                }
                for continuation in woken { continuation.resume(returning: at) }
            }
        }
    }
}
