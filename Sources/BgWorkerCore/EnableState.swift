// The persisted enable/disable choices made over the bus, and which wins against the file.

/// One worker's choice made over the bus, with the configured `enabled` value at that time.
public struct EnableIntent: Sendable, Equatable {
    public var enabled: Bool
    /// The worker's configured `enabled` when the choice was made. When the configuration's value
    /// later differs, the configuration is the newer intent and replaces this choice.
    public var configuredEnabled: Bool

    public init(enabled: Bool, configuredEnabled: Bool) {
        self.enabled = enabled
        self.configuredEnabled = configuredEnabled
    }
}

/// The content of the state file: the bus choices still in force, by worker name.
///
/// Text format (version 1), one line per worker, `#` comments and blank lines ignored:
///
///     bgworker-enable-state 1
///     disabled db-sync configured=true
///     enabled dice configured=false
public struct EnableState: Sendable, Equatable {
    public static let header = "bgworker-enable-state"
    public static let version = 1

    public var intents: [String: EnableIntent]

    public init(intents: [String: EnableIntent] = [:]) {
        self.intents = intents
    }

    /// The intent in force for a worker: its persisted choice while the configured value is still
    /// the one that choice was made against, else the configured value.
    public func effectiveEnabled(for definition: WorkerDefinition) -> Bool {
        guard let intent = intents[definition.name], intent.configuredEnabled == definition.enabled else {
            return definition.enabled
        }
        return intent.enabled
    }

    /// Keeps only choices that are still in force for this configuration: drops those of workers
    /// that are gone and those whose configured value changed since.
    public func pruned(for configuration: Configuration) -> EnableState {
        var kept: [String: EnableIntent] = [:]
        for definition in configuration.workers {
            if let intent = intents[definition.name], intent.configuredEnabled == definition.enabled {
                kept[definition.name] = intent
            }
        }
        return EnableState(intents: kept)
    }

    /// The file's text; lines sorted by name so that equal states give equal files.
    public func encoded() -> String {
        var text = "# bgworkerd: workers enabled or disabled over the bus; written by bgworkerd\n"
        text += "\(Self.header) \(Self.version)\n"
        for name in intents.keys.sorted() {
            guard let intent = intents[name] else { continue }
            text += "\(intent.enabled ? "enabled" : "disabled") \(name) configured=\(intent.configuredEnabled)\n"
        }
        return text
    }

    /// Reads the file's text. Tolerant: an empty or missing file (pass "") is an empty state; a
    /// corrupt one or one of another version is reported and also yields an empty state, so the
    /// configuration's values apply.
    public static func decode(_ text: String) -> (state: EnableState, problem: String?) {
        var text = text
        switch text.withUTF8({ bytes in Result { () throws(EnableStateError) in try parse(bytes) } }) {
        case .success(let state): return (state, nil)
        case .failure(let error): return (EnableState(), error.description)
        }
    }

    /// Reads the file's bytes in one pass: no String but one per worker name, one dictionary
    /// insertion per entry, so the cost is linear in the size with a small constant (issue 15).
    /// Lines end with "\n" (a "\r" before it is ignored); fields are separated by spaces.
    public static func parse(_ bytes: UnsafeBufferPointer<UInt8>) throws(EnableStateError) -> EnableState {
        var intents: [String: EnableIntent] = [:]
        // Sized once: growing a dictionary of 100,000s of entries rehashes it each time. An entry
        // takes at least 26 bytes, which bounds what a file of blank lines can make us reserve.
        var lines = 0
        for byte in bytes where byte == newline { lines += 1 }
        intents.reserveCapacity(min(lines, bytes.count / 26))
        var sawHeader = false
        var lineNumber = 0
        var lineStart = 0
        let end = bytes.count
        while lineStart < end {
            lineNumber += 1
            var lineEnd = lineStart
            while lineEnd < end && bytes[lineEnd] != newline { lineEnd += 1 }
            let next = lineEnd + 1
            if lineEnd > lineStart && bytes[lineEnd - 1] == carriageReturn { lineEnd -= 1 }
            let line = UnsafeBufferPointer(rebasing: bytes[lineStart..<lineEnd])
            lineStart = next

            // Up to 3 fields; a fourth only marks the line malformed.
            var fields: (Range<Int>, Range<Int>, Range<Int>) = (0..<0, 0..<0, 0..<0)
            var count = 0
            var i = 0
            while i < line.count && count <= 3 {
                while i < line.count && line[i] == space { i += 1 }
                guard i < line.count else { break }
                let fieldStart = i
                while i < line.count && line[i] != space { i += 1 }
                switch count {
                case 0: fields.0 = fieldStart..<i
                case 1: fields.1 = fieldStart..<i
                case 2: fields.2 = fieldStart..<i
                default: break
                }
                count += 1
            }
            if count == 0 || line[fields.0.lowerBound] == UInt8(ascii: "#") { continue }
            let first = line[fields.0], second = line[fields.1], third = line[fields.2]
            if !sawHeader {
                // `header` and `version` as StaticStrings (the round-trip test holds them equal).
                guard count == 2, equals(first, "bgworker-enable-state") else {
                    throw EnableStateError(line: lineNumber, reason: .missingHeader)
                }
                guard equals(second, "1") else {
                    throw EnableStateError(line: lineNumber, reason: .unsupportedVersion(excerpt(second)))
                }
                sawHeader = true
                continue
            }
            let enabled = equals(first, "enabled")
            let configuredEnabled = equals(third, "configured=true")
            guard count == 3, enabled || equals(first, "disabled"), isValidWorkerName(utf8: second),
                configuredEnabled || equals(third, "configured=false")
            else {
                throw EnableStateError(line: lineNumber, reason: .malformedEntry(excerpt(line[...])))
            }
            let name = String(decoding: UnsafeBufferPointer(rebasing: second), as: UTF8.self)
            guard intents.updateValue(EnableIntent(enabled: enabled, configuredEnabled: configuredEnabled), forKey: name) == nil else {
                throw EnableStateError(line: lineNumber, reason: .listedTwice(name))
            }
        }
        return EnableState(intents: intents)
    }

    private static let newline = UInt8(ascii: "\n"), carriageReturn = UInt8(ascii: "\r"), space = UInt8(ascii: " ")

    /// A field against a keyword of the format: a StaticString needs no reference counting, and
    /// this loop no generic `elementsEqual` (both showed in perf at 100,000s of lines).
    @inline(__always)
    private static func equals(_ field: Slice<UnsafeBufferPointer<UInt8>>, _ word: StaticString) -> Bool {
        guard field.count == word.utf8CodeUnitCount else { return false }
        var i = 0
        for byte in field {
            guard byte == word.utf8Start[i] else { return false }
            i += 1
        }
        return true
    }

    /// Text of a file for a log line: printable ASCII as is, other bytes as \xNN, and at most
    /// 80 bytes of it, so that a line of garbage or of megabytes stays one readable line.
    static func excerpt(_ bytes: Slice<UnsafeBufferPointer<UInt8>>) -> String {
        let limit = 80
        var text = ""
        for byte in bytes.prefix(limit) {
            if (0x20...0x7e).contains(byte) && byte != UInt8(ascii: "\\") {
                text.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                let hex = String(byte, radix: 16)
                text += "\\x" + (hex.count == 1 ? "0" + hex : hex)
            }
        }
        if bytes.count > limit { text += "... (\(bytes.count) bytes)" }
        return text
    }
}

/// Why a state file's text was refused; the whole file then counts as empty.
public struct EnableStateError: Error, Equatable, CustomStringConvertible {
    public enum Reason: Equatable, Sendable {
        /// The first line that is neither blank nor a comment is not `bgworker-enable-state N`.
        case missingHeader
        /// Another version's file (its version text, excerpted).
        case unsupportedVersion(String)
        /// An entry that is not `enabled|disabled NAME configured=true|false` (the line, excerpted).
        case malformedEntry(String)
        case listedTwice(String)
    }

    /// 1-based, counting "\n".
    public var line: Int
    public var reason: Reason

    public init(line: Int, reason: Reason) {
        self.line = line
        self.reason = reason
    }

    public var description: String {
        switch reason {
        case .missingHeader: "line \(line): expected '\(EnableState.header) \(EnableState.version)'"
        case .unsupportedVersion(let version): "line \(line): unsupported version '\(version)'"
        case .malformedEntry(let text): "line \(line): malformed entry '\(text)'"
        case .listedTwice(let name): "line \(line): worker '\(name)' listed twice"
        }
    }
}
