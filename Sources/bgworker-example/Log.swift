import ClientSupport
import Glibc
import Synchronization

/// The daemon's log levels, lowest first.
enum LogLevel: UInt8, CaseIterable, Comparable, Sendable {
    case trace, debug, info, notice, warning, error, critical

    init?(name: String) {
        guard let level = Self.allCases.first(where: { $0.name == name }) else { return nil }
        self = level
    }

    var name: String {
        switch self {
        case .trace: "trace"
        case .debug: "debug"
        case .info: "info"
        case .notice: "notice"
        case .warning: "warning"
        case .error: "error"
        case .critical: "critical"
        }
    }

    /// The syslog priority of sd-daemon's `<N>` line prefix (trace has none of its own: debug).
    var priority: Int {
        switch self {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    static func < (a: LogLevel, b: LogLevel) -> Bool { a.rawValue < b.rawValue }
}

/// Log lines on standard output, each with its sd-daemon priority prefix (`<7>` debug ...
/// `<2>` critical), which the daemon's process runner (and journald) turn into the priority of
/// the entry. The threshold changes at run time, from any thread.
final class WorkerLog: Sendable {
    private let threshold: Atomic<UInt8>

    init(level: LogLevel) { threshold = Atomic(level.rawValue) }

    var level: LogLevel {
        get { LogLevel(rawValue: threshold.load(ordering: .relaxed)) ?? .info }
        set { threshold.store(newValue.rawValue, ordering: .relaxed) }
    }

    func log(_ level: LogLevel, _ message: @autoclosure () -> String) {
        guard level >= self.level else { return }
        writeLine("<\(level.priority)>\(message())")
    }

    /// A notice shown at every level (a change of the level itself).
    func announce(_ message: String) {
        writeLine("<\(LogLevel.notice.priority)>\(message)")
    }

    func trace(_ message: @autoclosure () -> String) { log(.trace, message()) }
    func debug(_ message: @autoclosure () -> String) { log(.debug, message()) }
    func info(_ message: @autoclosure () -> String) { log(.info, message()) }
    func notice(_ message: @autoclosure () -> String) { log(.notice, message()) }
    func warning(_ message: @autoclosure () -> String) { log(.warning, message()) }
    func error(_ message: @autoclosure () -> String) { log(.error, message()) }
}
