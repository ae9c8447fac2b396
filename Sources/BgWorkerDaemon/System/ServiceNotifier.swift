// Telling systemd how the daemon is doing (sd_notify), and the watchdog keep-alive.
import CShims
import CSystemd
import Glibc
import ServiceLifecycle
import Synchronization

/// sd_notify(3) messages. Without `NOTIFY_SOCKET` (not started by systemd with Type=notify)
/// every call does nothing.
///
/// Never blocks: sd_notify's send waits while the service manager's queue is full
/// (`net.unix.max_dgram_qlen` unread datagrams, 10 by the kernel's default), and a manager that
/// does not read (hung, or a test's socket) stopped the daemon's event loop for as long. Here a
/// full queue keeps the message, in order, and the socket's writability (an event on the loop)
/// sends it; a `STATUS=` alone replaces a `STATUS=` still waiting, so the queue stays short.
public final class ServiceNotifier: Sendable {
    private struct Pending {
        var fd: Int32 = -1
        var address = ""
        var messages: [String] = []
        var watch: LoopRegistration?

        /// Closes the socket, if any, and connects a new one to `address`. 0, or connect's errno
        /// (`fd` is then -1).
        mutating func reconnect(to address: String) -> Int32 {
            if fd >= 0 { close(fd) }
            fd = _bgw_notify_connect(address)
            return fd >= 0 ? 0 : errno
        }
    }

    private let pending = Mutex(Pending())
    /// The most messages kept while the manager reads none; beyond, `STATUS=` texts are dropped.
    private static let kept = 64

    public init() {}

    deinit {
        pending.withLock { if $0.fd >= 0 { close($0.fd) } }
    }

    /// Sends `state` (newline-separated `KEY=value` assignments). Returns > 0 when sent or kept
    /// to be sent, 0 without NOTIFY_SOCKET, < 0 a negative errno (the message is dropped).
    @discardableResult
    public func send(_ state: String) -> Int32 {
        guard let variable = getenv("NOTIFY_SOCKET"), variable.pointee != 0 else { return 0 }
        let address = String(cString: variable)
        // Other forms (AF_VSOCK): libsystemd's own send.
        guard address.hasPrefix("/") || address.hasPrefix("@") else { return sd_notify(0, state) }
        let (result, mustWatch) = pending.withLock { p -> (Int32, Bool) in
            if p.address != address, p.watch == nil {
                let error = p.reconnect(to: address)
                guard error == 0 else { return (-error, false) }
                p.address = address
            }
            guard p.messages.isEmpty else {
                Self.keep(state, in: &p.messages)
                return (1, false)
            }
            var error = Self.sendNow(state, on: p.fd)
            if error == ECONNREFUSED || error == ENOTCONN {
                // The socket was made anew (systemd re-executed): connect again, once.
                let failed = p.reconnect(to: address)
                error = failed == 0 ? Self.sendNow(state, on: p.fd) : failed
            }
            switch error {
            case 0: return (1, false)
            case EAGAIN:
                p.messages.append(state)
                return (1, true)
            case let error:
                // The manager is gone: connect anew next time.
                if p.fd >= 0 { close(p.fd) }
                p.fd = -1
                p.address = ""
                return (-error, false)
            }
        }
        if mustWatch { EventLoop.shared.execute { [self] in watchWritable() } }
        return result
    }

    /// 0 when sent, else the errno.
    private static func sendNow(_ message: String, on fd: Int32) -> Int32 {
        var bytes = Array(message.utf8)
        return bytes.withUnsafeMutableBytes { _bgw_send_nowait(fd, $0.baseAddress, $0.count) } < 0 ? errno : 0
    }

    private static func statusOnly(_ message: String) -> Bool {
        message.hasPrefix("STATUS=") && !message.contains("\n")
    }

    private static func keep(_ message: String, in messages: inout [String]) {
        if statusOnly(message), let last = messages.last, statusOnly(last) {
            messages[messages.count - 1] = message
        } else if messages.last == message {
            return  // the same again (WATCHDOG=1)
        } else if messages.count < kept || !statusOnly(message) {
            messages.append(message)
        }
    }

    /// On the loop: sends what waits each time the manager's queue has room.
    private func watchWritable() {
        pending.withLock { p in
            guard p.watch == nil, !p.messages.isEmpty, p.fd >= 0 else { return }
            p.watch = try? EventLoop.shared.register(fd: p.fd, events: EPOLLOUT.rawValue) { [self] _ in flush() }
            // Cannot watch (out of fds): nothing more is sent until the next message.
            if p.watch == nil { p.messages = [] }
        }
    }

    private func flush() {
        pending.withLock { p in
            while let first = p.messages.first {
                let error = Self.sendNow(first, on: p.fd)
                if error == EAGAIN { return }
                if error != 0 {
                    p.messages = []  // the manager is gone: nothing waits for these any more
                    break
                }
                p.messages.removeFirst()
            }
            if let watch = p.watch { EventLoop.shared.unregister(watch) }
            p.watch = nil
        }
    }

    /// `READY=1`: the daemon owns its bus name and has started its workers (or a reload ended).
    @discardableResult
    public func ready(status: String? = nil) -> Int32 {
        send(["READY=1", status.map { "STATUS=\($0)" }].compactMap { $0 }.joined(separator: "\n"))
    }

    /// `RELOADING=1` with `MONOTONIC_USEC`, which systemd 253+ requires for Type=notify-reload
    /// (older systemd ignores it). Send `ready()` when the reload is done.
    @discardableResult
    public func reloading(status: String? = nil) -> Int32 {
        send(
            ["RELOADING=1", "MONOTONIC_USEC=\(Self.monotonicMicroseconds())", status.map { "STATUS=\($0)" }]
                .compactMap { $0 }.joined(separator: "\n"))
    }

    /// `STOPPING=1`: the daemon is stopping its workers and will exit.
    @discardableResult
    public func stopping(status: String? = nil) -> Int32 {
        send(["STOPPING=1", status.map { "STATUS=\($0)" }].compactMap { $0 }.joined(separator: "\n"))
    }

    /// `STATUS=`: a one-line text `systemctl status` shows.
    @discardableResult
    public func status(_ text: String) -> Int32 {
        send("STATUS=\(text.split(whereSeparator: \.isNewline).joined(separator: " "))")
    }

    /// `WATCHDOG=1`.
    @discardableResult
    public func watchdogKeepAlive() -> Int32 { send("WATCHDOG=1") }

    /// The watchdog interval systemd expects keep-alives within (`WATCHDOG_USEC`, for this
    /// process per `WATCHDOG_PID`: sd_watchdog_enabled), or nil when there is no watchdog.
    public static func watchdogInterval() -> Duration? {
        var microseconds: UInt64 = 0
        guard sd_watchdog_enabled(0, &microseconds) > 0, microseconds > 0 else { return nil }
        return .microseconds(Int64(clamping: microseconds))
    }

    static func monotonicMicroseconds() -> UInt64 { monotonicNanoseconds() / 1000 }
}

/// Sends `WATCHDOG=1` every half interval, on a timer, until the service group shuts down.
/// Put it early in the ServiceGroup, so that it keeps the watchdog fed while later services
/// (the supervisor stopping workers) shut down.
public struct WatchdogService: Service {
    public let interval: Duration
    private let notifier: ServiceNotifier

    /// nil when systemd asked for no watchdog.
    public init?(notifier: ServiceNotifier = ServiceNotifier(), interval: Duration? = ServiceNotifier.watchdogInterval()) {
        guard let interval, interval > .zero else { return nil }
        self.interval = interval
        self.notifier = notifier
    }

    public func run() async throws {
        let period = interval / 2
        await cancelWhenGracefulShutdown {
            notifier.watchdogKeepAlive()
            while (try? await EventLoop.shared.sleep(for: period)) != nil {
                notifier.watchdogKeepAlive()
            }
        }
    }
}
