import DBus
import Glibc

/// A JSON value with its keys in the order given (stable, readable output), rendered on one line.
indirect enum JSON {
    case string(String)
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    case bool(Bool)
    case null
    case array([JSON])
    case object([(String, JSON)])

    var rendered: String {
        var out = ""
        render(into: &out)
        return out
    }

    private func render(into out: inout String) {
        switch self {
        case .string(let s): Self.quote(s, into: &out)
        case .int(let v): out += String(v)
        case .uint(let v): out += String(v)
        case .double(let v): out += v.isFinite ? String(v) : "null"
        case .bool(let v): out += v ? "true" : "false"
        case .null: out += "null"
        case .array(let items):
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                item.render(into: &out)
            }
            out += "]"
        case .object(let members):
            out += "{"
            for (i, (key, value)) in members.enumerated() {
                if i > 0 { out += "," }
                Self.quote(key, into: &out)
                out += ":"
                value.render(into: &out)
            }
            out += "}"
        }
    }

    static func quote(_ s: String, into out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }

    /// Any D-Bus value: variants unwrapped, structures as arrays, dictionaries with string-like
    /// keys as objects (others as arrays of [key, value] pairs), paths and signatures as strings.
    init(_ value: DBusValue) {
        switch value {
        case .byte(let v): self = .uint(UInt64(v))
        case .bool(let v): self = .bool(v)
        case .int16(let v): self = .int(Int64(v))
        case .uint16(let v): self = .uint(UInt64(v))
        case .int32(let v): self = .int(Int64(v))
        case .uint32(let v): self = .uint(UInt64(v))
        case .int64(let v): self = .int(v)
        case .uint64(let v): self = .uint(v)
        case .double(let v): self = .double(v)
        case .string(let v): self = .string(v)
        case .objectPath(let v): self = .string(v.rawValue)
        case .signature(let v): self = .string(v.description)
        case .unixFD(let v): self = .int(Int64(v.rawValue ?? -1))
        case .array(_, let items): self = .array(items.map(JSON.init))
        case .dictionary(_, _, let entries):
            if entries.allSatisfy({ Self.keyText($0.key) != nil }) {
                self = .object(entries.map { (Self.keyText($0.key) ?? "", JSON($0.value)) })
            } else {
                self = .array(entries.map { .array([JSON($0.key), JSON($0.value)]) })
            }
        case .structure(let fields): self = .array(fields.map(JSON.init))
        case .variant(let inner): self = JSON(inner)
        }
    }

    private static func keyText(_ key: DBusValue) -> String? {
        switch key {
        case .string(let s): s
        case .objectPath(let p): p.rawValue
        default: nil
        }
    }
}

extension WorkerInfo {
    var json: JSON {
        .object([
            ("name", .string(name)), ("state", .string(state)), ("enabled", .bool(enabled)), ("pid", .uint(UInt64(pid))),
            ("restarts", .uint(UInt64(restarts))), ("lastExit", .string(lastExit)), ("runOn", .string(runOn)),
            ("stateChangedAt", .uint(stateChangedAt)), ("path", .string(path)),
            ("logLevel", .string(logLevel)), ("effectiveLogLevel", .string(effectiveLogLevel)),
            ("stateReason", .string(stateReason)),
        ] + (statusText.map { [("statusText", JSON.string($0))] } ?? [])
          + (readyAt.map { [("readyAt", JSON.uint($0))] } ?? []))
    }

    /// `status NAME`'s readiness lines: `Ready: since TIME` while ready, `Status: "text"` when the
    /// worker sent one (as systemctl shows it); none from a daemon without the properties.
    var readinessFields: (ready: [(String, String)], status: [(String, String)]) {
        let ready = readyAt.flatMap { $0 > 0 ? [("Ready", "since \(Time.local(microseconds: $0))")] : nil } ?? []
        let status = statusText.flatMap { $0.isEmpty ? nil : [("Status", "\"\(Terminal.escaped($0))\"")] } ?? []
        return (ready, status)
    }

    /// `debug (its own)` or `info (the daemon's)`; nil from a daemon without per-worker levels.
    var logLevelText: String? {
        guard !effectiveLogLevel.isEmpty else { return nil }
        return "\(effectiveLogLevel) (\(logLevel.isEmpty ? "the daemon's" : "its own"))"
    }

    /// A row of the status table.
    var row: [String] {
        [name, state, pid == 0 ? "-" : String(pid), enabled ? "yes" : "no", String(restarts),
         lastExit.isEmpty ? "-" : lastExit, runOn, Time.local(microseconds: stateChangedAt)]
    }

    static let header = ["NAME", "STATE", "PID", "ENABLED", "RESTARTS", "LAST-EXIT", "RUN-ON", "SINCE"]

    static func colour(_ column: Int, _ cell: String) -> String { column == 1 ? Style.state(cell) : cell }
}

extension LogLine {
    var json: JSON { .object([("time", .uint(time)), ("text", .string(text))]) }

    /// `2026-12-05 06:03:08 dice: text`, as journalctl shows a line, with the text's control
    /// characters escaped (`Terminal.escaped`).
    func rendered(worker: String) -> String { "\(Time.local(microseconds: time)) \(worker): \(Terminal.escaped(text))" }
}

extension ListedWorker {
    var json: JSON {
        .object([("name", .string(name)), ("state", .string(state)), ("enabled", .bool(enabled)),
                 ("pid", .uint(UInt64(pid))), ("path", .string(path))])
    }

    var row: [String] { [name, state, pid == 0 ? "-" : String(pid), enabled ? "yes" : "no"] }

    static let header = ["NAME", "STATE", "PID", "ENABLED"]

    static func colour(_ column: Int, _ cell: String) -> String { column == 1 ? Style.state(cell) : cell }
}

extension ManagerInfo {
    var jsonMembers: [(String, JSON)] {
        [("version", .string(version)), ("haRole", .string(haRole)), ("runner", .string(runner)), ("logLevel", .string(logLevel))]
            + (maintenance.map { [("maintenance", JSON.bool($0))] } ?? [])
    }
}

/// Left-aligned columns two spaces apart, as systemctl and supervisorctl print them. `colour`
/// may wrap a cell (by column index) in escape codes; widths are measured without them.
func table(_ header: [String], _ rows: [[String]], colour: (Int, String) -> String = { $1 }) -> String {
    var widths = header.map(\.count)
    for row in rows {
        for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) }
    }
    return ([header] + rows).enumerated().map { index, row in
        var line = ""
        for (i, cell) in row.enumerated() {
            line += index == 0 ? cell : colour(i, cell)
            if i < row.count - 1 { line += String(repeating: " ", count: widths[i] - cell.count + 2) }
        }
        return line
    }.joined(separator: "\n")
}

/// Colours for a person at a terminal: only when standard output is one, `NO_COLOR` is unset
/// or empty (no-color.org) and `TERM` is not `dumb`. Pipes, files and --json never get any.
enum Style {
    static let enabled: Bool = {
        guard isatty(STDOUT_FILENO) == 1 else { return false }
        if let noColor = getenv("NO_COLOR"), noColor.pointee != 0 { return false }
        if let term = getenv("TERM"), String(cString: term) == "dumb" { return false }
        return true
    }()

    /// A state in systemctl's colours: running green, failed and backoff red, starting,
    /// stopping and standby yellow; the others plain.
    static func state(_ state: String) -> String {
        switch state {
        case "running": paint(state, "32")
        case "failed", "backoff": paint(state, "1;31")
        case "starting", "stopping", "standby": paint(state, "33")
        default: state
        }
    }

    static func paint(_ text: String, _ code: String) -> String {
        enabled ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text
    }
}

/// `key: value` lines with the values aligned.
func fields(_ pairs: [(String, String)]) -> String {
    let width = pairs.map(\.0.count).max() ?? 0
    return pairs.map { String(repeating: " ", count: width - $0.0.count) + $0.0 + ": " + $0.1 }.joined(separator: "\n")
}

enum Time {
    /// `YYYY-MM-DD HH:MM:SS` in local time, `-` for 0.
    static func local(microseconds: UInt64) -> String {
        guard microseconds > 0 else { return "-" }
        return format(seconds: Int(microseconds / 1_000_000), "%Y-%m-%d %H:%M:%S", utc: false)
    }

    /// `YYYY-MM-DD HH:MM:SS.mmm` in local time, `-` for 0 (watch's property values).
    static func localMillis(microseconds: UInt64) -> String {
        guard microseconds > 0 else { return "-" }
        return local(microseconds: microseconds) + "." + pad(String(microseconds / 1000 % 1000), 3)
    }

    /// Now, as `YYYY-MM-DD HH:MM:SS.mmm` local time (text) or RFC 3339 UTC with microseconds (JSON).
    static func now() -> (text: String, json: String) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let millis = String(ts.tv_nsec / 1_000_000)
        let micros = String(ts.tv_nsec / 1_000)
        let text = format(seconds: ts.tv_sec, "%Y-%m-%d %H:%M:%S", utc: false) + "." + pad(millis, 3)
        let json = format(seconds: ts.tv_sec, "%Y-%m-%dT%H:%M:%S", utc: true) + "." + pad(micros, 6) + "Z"
        return (text, json)
    }

    private static func pad(_ digits: String, _ width: Int) -> String {
        String(repeating: "0", count: max(0, width - digits.count)) + digits
    }

    private static func format(seconds: Int, _ pattern: String, utc: Bool) -> String {
        var t = time_t(seconds)
        var parts = tm()
        if utc { gmtime_r(&t, &parts) } else { localtime_r(&t, &parts) }
        var buffer = [CChar](repeating: 0, count: 64)
        let n = strftime(&buffer, buffer.count, pattern, &parts)
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

enum Terminal {
    /// `text` with every control character but tab as `\xNN` (C0, DEL, and C1, which some
    /// terminals obey as escape sequences too): a worker's line can then neither move the cursor,
    /// recolour the terminal nor hide what precedes a `\r`. (journalctl and systemctl status show
    /// such a line as `[N blob data]` unless --all; escaped, it stays readable.) Backslashes stay.
    static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: isControl) else { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            if isControl(scalar) {
                let hex = String(scalar.value, radix: 16)
                out += "\\x" + (hex.count < 2 ? "0" : "") + hex
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    private static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        (scalar.value < 0x20 && scalar != "\t") || (0x7F...0x9F).contains(scalar.value)
    }
}
