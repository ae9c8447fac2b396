// The daemon's own logging: a swift-log handler that writes to the journal where journald runs,
// else one readable line per message on stderr. Messages are handed to a writer thread through
// a bounded queue, so that whoever logs (the supervisor above all) never blocks on the journal
// or on a full stderr pipe; when the queue is full, messages are dropped and counted.
import CShims
import Glibc
import Logging
import Synchronization

/// The log level every handler made with it obeys, changeable at once at runtime (the
/// `LogLevel` property on the bus). The names are the contract's and swift-log's:
/// trace debug info notice warning error critical.
public final class LogLevelControl: Sendable {
    private let index: Atomic<Int>

    public init(_ level: Logger.Level = .info) {
        index = Atomic(Logger.Level.allCases.firstIndex(of: level)!)
    }

    public var level: Logger.Level {
        get { Logger.Level.allCases[index.load(ordering: .relaxed)] }
        set { index.store(Logger.Level.allCases.firstIndex(of: newValue)!, ordering: .relaxed) }
    }

    /// The level of a contract name (`warning`...), nil for anything else.
    public static func level(named name: String) -> Logger.Level? { Logger.Level(rawValue: name) }
}

extension Logger.Level {
    /// The syslog priority (`PRIORITY=`): trace and debug 7, info 6, notice 5, warning 4,
    /// error 3, critical 2.
    public var syslogPriority: Int32 {
        switch self {
        case .trace, .debug: SyslogPriority.debug
        case .info: SyslogPriority.info
        case .notice: SyslogPriority.notice
        case .warning: SyslogPriority.warning
        case .error: SyslogPriority.error
        case .critical: SyslogPriority.critical
        }
    }
}

/// Where the daemon's own messages go.
public enum LogDestination: Sendable, Equatable {
    /// The journal, with `SYSLOG_IDENTIFIER` and the message's fields.
    case journal(identifier: String)
    /// One line per message on this fd: `2026-01-02T03:04:05.678Z warning label: message key=value`.
    case lines(fd: Int32)

    /// The journal where journald runs, else stderr.
    public static func automatic(identifier: String = "bgworkerd") -> Self {
        Journal.isAvailable ? .journal(identifier: identifier) : .lines(fd: 2)
    }
}

/// One message, as the writer thread receives it.
struct LogRecord: Sendable {
    var level: Logger.Level
    var message: String
    var label: String
    var metadata: [(key: String, value: String)]
    var file: String
    var function: String
    var line: UInt
    /// CLOCK_REALTIME when it was logged.
    var time: timespec

    /// The journal fields: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, CODE_FILE, CODE_LINE,
    /// CODE_FUNC, LOGGER (the swift-log label), then each metadata key as a field name.
    func journalFields(identifier: String) -> [String] {
        var fields = [
            "MESSAGE=\(message)", "PRIORITY=\(level.syslogPriority)", "SYSLOG_IDENTIFIER=\(identifier)",
            "CODE_FILE=\(file)", "CODE_LINE=\(line)", "CODE_FUNC=\(function)", "LOGGER=\(label)",
        ]
        for (key, value) in metadata { fields.append("\(Journal.fieldName(key))=\(value)") }
        return fields
    }

    /// `2026-01-02T03:04:05.678Z warning label: message key=value key2="two words"`.
    /// Text from a peer (a client's who/why, a worker's path) is escaped (`escapedForLog`): one
    /// record is one line, and it cannot recolour or rewrite a terminal that shows the log.
    func formattedLine() -> String {
        var text = "\(Self.utcTimestamp(time)) \(level) \(label): \(message.escapedForLog())"
        for (key, value) in metadata {
            let escaped = value.escapedForLog()
            let needsQuotes = escaped.isEmpty || escaped.contains(where: { $0 == " " || $0 == "\"" || $0 == "=" })
            text += needsQuotes ? " \(key)=\"\(escaped.replacing("\"", with: "\\\""))\"" : " \(key)=\(escaped)"
        }
        return text
    }

    static func utcTimestamp(_ time: timespec) -> String {
        var seconds = time_t(time.tv_sec)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2))."
            + "\(pad(Int32(time.tv_nsec / 1_000_000), 3))Z"
    }
}

extension String {
    /// One line, printable: `\` as `\\`, newline as `\n`, carriage return as `\r`, every other
    /// control character but tab (C0, DEL, C1) as `\xNN`, as bgworkerctl shows worker output. A
    /// message then cannot fake a second log line, move the cursor or hide what precedes a `\r`,
    /// and a `\n` typed by a client stays `\\n`, never mistaken for an escaped newline.
    func escapedForLog() -> String {
        func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
            scalar == "\\" || (scalar.value < 0x20 && scalar != "\t") || (0x7F...0x9F).contains(scalar.value)
                || scalar == "\u{2028}" || scalar == "\u{2029}"
        }
        guard unicodeScalars.contains(where: needsEscape) else { return self }
        var out = ""
        for scalar in unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case _ where needsEscape(scalar):
                let hex = String(scalar.value, radix: 16)
                out += "\\x" + (hex.count < 2 ? "0" : "") + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}

/// The thread that writes the daemon's messages, and the queue in front of it.
public final class LogWriter: Sendable {
    public let destination: LogDestination
    private let capacity: Int
    private let state = Mutex<(queue: [LogRecord], dropped: Int, idleWaiters: [CheckedContinuation<Void, Never>])>(([], 0, []))
    private let wake: EventFD

    /// Starts the writer thread (it lives as long as the process).
    public init(destination: LogDestination = .automatic(), capacity: Int = 10_000) throws {
        self.destination = destination
        self.capacity = capacity
        wake = try EventFD()
        try startDedicatedThread(name: "bgw-log") { [self] in run() }
    }

    /// A handler factory for `LoggingSystem.bootstrap` (executables only; tests make handlers).
    public func handlerFactory(level: LogLevelControl) -> @Sendable (String) -> any LogHandler {
        { label in DaemonLogHandler(label: label, level: level, writer: self) }
    }

    /// Queues a record; never blocks. Returns false when the queue was full (the record is
    /// dropped and counted; the count is logged when there is room again).
    @discardableResult
    func submit(_ record: LogRecord) -> Bool {
        let accepted = state.withLock { state -> Bool in
            guard state.queue.count < capacity else {
                state.dropped += 1
                return false
            }
            state.queue.append(record)
            return true
        }
        if accepted { wake.signal() }
        return accepted
    }

    /// Returns once every record queued so far has been written.
    public func flush() async {
        await withCheckedContinuation { continuation in
            state.withLock { $0.idleWaiters.append(continuation) }
            wake.signal()
        }
    }

    private func run() {
        var poller = pollfd(fd: wake.fd, events: Int16(POLLIN), revents: 0)
        while true {
            _ = retryOnInterrupt { poll(&poller, 1, -1) }
            wake.drain()
            while true {
                let (batch, dropped, waiters) = state.withLock { state in
                    defer { state.queue = []; state.dropped = 0 }
                    let waiters = state.queue.isEmpty ? state.idleWaiters : []
                    if state.queue.isEmpty { state.idleWaiters = [] }
                    return (state.queue, state.dropped, waiters)
                }
                waiters.forEach { $0.resume() }
                if batch.isEmpty && dropped == 0 { break }
                if dropped > 0 { write(droppedNotice(dropped)) }
                batch.forEach(write)
            }
        }
    }

    private func droppedNotice(_ count: Int) -> LogRecord {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return LogRecord(
            level: .warning, message: "\(count) log messages dropped: the log writer could not keep up",
            label: "bgworkerd.log", metadata: [], file: #fileID, function: #function, line: #line, time: now)
    }

    private func write(_ record: LogRecord) {
        switch destination {
        case .journal(let identifier):
            Journal.send(record.journalFields(identifier: identifier))
        case .lines(let fd):
            writeFully(fd, Array((record.formattedLine() + "\n").utf8))
        }
    }
}

/// The swift-log handler of the daemon: its level is the shared `LogLevelControl`'s (setting it
/// on any logger changes it for all: the daemon has one log level), its metadata is its own.
public struct DaemonLogHandler: LogHandler {
    public let label: String
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let level: LogLevelControl
    private let writer: LogWriter

    public init(label: String, level: LogLevelControl, writer: LogWriter) {
        self.label = label
        self.level = level
        self.writer = writer
    }

    public var logLevel: Logger.Level {
        get { level.level }
        set { level.level = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let own = event.metadata { merged.merge(own) { _, new in new } }
        if let error = event.error { merged["error"] = "\(error)" }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        writer.submit(LogRecord(
            level: event.level, message: event.message.description, label: label,
            metadata: merged.sorted { $0.key < $1.key }.map { ($0.key, $0.value.description) },
            file: event.file, function: event.function, line: event.line, time: now))
    }
}
