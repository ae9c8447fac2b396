// Telling systemd how the daemon is doing (sd_notify), and the watchdog keep-alive.
import CSystemd
import Glibc
import ServiceLifecycle

/// sd_notify(3) messages. Without `NOTIFY_SOCKET` (not started by systemd with Type=notify)
/// every call does nothing.
public struct ServiceNotifier: Sendable {
    public init() {}

    /// Sends `state` (newline-separated `KEY=value` assignments). Returns sd_notify's result:
    /// > 0 sent, 0 no NOTIFY_SOCKET, < 0 a negative errno.
    @discardableResult
    public func send(_ state: String) -> Int32 {
        sd_notify(0, state)
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
