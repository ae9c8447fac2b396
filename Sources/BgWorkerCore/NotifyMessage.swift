// One datagram of systemd's notify protocol (sd_notify(3)), parsed the way systemd's service
// manager reads it (manager_dispatch_notify_fd, service_notify_message; checked against systemd
// 252's own functions, docs/notify.md lists each rule and where we differ). Pure: the socket,
// the credentials and the file descriptors are the daemon's (NotifyReceiver).

/// What one notify datagram says. A field keeps its default when its line is absent or its value
/// is one systemd ignores (e.g. `WATCHDOG_USEC=abc`).
public struct NotifyMessage: Sendable, Equatable {
    public var ready = false            // READY=1
    public var reloading = false        // RELOADING=1
    public var stopping = false         // STOPPING=1
    /// STATUS=text: the first `STATUS=` line decides, as in systemd; "" clears the status. A value
    /// that is not valid UTF-8 (or holds a Unicode noncharacter, which systemd refuses too) is nil.
    public var status: String? = nil
    public var watchdogPing = false     // WATCHDOG=1 (the first WATCHDOG= line decides)
    public var watchdogTrigger = false  // WATCHDOG=trigger
    /// WATCHDOG_USEC=N. 0 is valid: under systemd it turns the watchdog off.
    public var watchdogUsec: UInt64? = nil
    public var extendTimeoutUsec: UInt64? = nil  // EXTEND_TIMEOUT_USEC=N
    /// BARRIER=1, alone in its datagram (with other lines the datagram is refused, as systemd
    /// ignores all of it). The barrier's fd is the receiver's business: it closes it.
    public var barrier = false
    /// MAINPID=N (N > 0, fits pid_t). Parsed; the daemon ignores it (docs/notify.md).
    public var mainPid: Int32? = nil

    public init() {}

    /// systemd's NOTIFY_BUFFER_MAX (PIPE_BUF): a longer datagram is refused whole.
    public static let maximumSize = 4096

    /// One datagram's bytes. Throws only for what refuses the whole datagram; a line that is
    /// unknown, has no `=`, or has a value systemd would not take is ignored.
    public init(parsing bytes: some Collection<UInt8>) throws(NotifyMessageError) {
        let count = bytes.count
        guard count <= Self.maximumSize else { throw .tooLarge(count) }
        var text = Array(bytes)
        // systemd permits one trailing NUL; any other NUL refuses the datagram, so none reaches a String.
        if text.last == 0 { text.removeLast() }
        if let offset = text.firstIndex(of: 0) { throw .embeddedNUL(offset: offset) }
        let lines = try Self.splitLines(text)

        if lines.contains(where: { $0.elementsEqual(Key.barrier) }) {
            guard lines.count == 1 else { throw .barrierWithOtherLines(lines.count - 1) }
            barrier = true
            return
        }
        func has(_ line: [UInt8]) -> Bool { lines.contains { $0.elementsEqual(line) } }
        // systemd looks up each valued key with strv_find_startswith: the first line wins.
        func first(_ prefix: [UInt8]) -> ArraySlice<UInt8>? {
            guard let line = lines.first(where: { $0.starts(with: prefix) }) else { return nil }
            return line[(line.startIndex + prefix.count)...]
        }

        ready = has(Key.ready)
        reloading = has(Key.reloading)
        stopping = has(Key.stopping)
        if let value = first(Key.status) { status = Self.statusText(value) }
        if let value = first(Key.watchdog) {
            watchdogPing = value.elementsEqual(Key.one)
            watchdogTrigger = value.elementsEqual(Key.trigger)
        }
        if let value = first(Key.watchdogUsec) { watchdogUsec = Self.unsignedNumber(value) }
        if let value = first(Key.extendTimeoutUsec) { extendTimeoutUsec = Self.unsignedNumber(value) }
        if let value = first(Key.mainPid), let pid = Self.unsignedNumber(value), pid > 0, pid <= UInt64(Int32.max) {
            mainPid = Int32(pid)
        }
    }

    /// The lines and key prefixes, as bytes once (a flood parses many datagrams a second).
    private enum Key {
        static let barrier = Array("BARRIER=1".utf8)
        static let ready = Array("READY=1".utf8)
        static let reloading = Array("RELOADING=1".utf8)
        static let stopping = Array("STOPPING=1".utf8)
        static let status = Array("STATUS=".utf8)
        static let watchdog = Array("WATCHDOG=".utf8)
        static let watchdogUsec = Array("WATCHDOG_USEC=".utf8)
        static let extendTimeoutUsec = Array("EXTEND_TIMEOUT_USEC=".utf8)
        static let mainPid = Array("MAINPID=".utf8)
        static let one = Array("1".utf8)
        static let trigger = Array("trigger".utf8)
    }

    /// systemd's strv_split_newlines (extract_first_word with no flags): lines end at `\n` or
    /// `\r`, empty lines vanish, and a backslash takes the next byte literally (a newline too);
    /// a backslash at the very end makes systemd drop the datagram.
    static func splitLines(_ text: [UInt8]) throws(NotifyMessageError) -> [ArraySlice<UInt8>] {
        // Without a backslash the lines are slices of the text as it is.
        if !text.contains(UInt8(ascii: "\\")) {
            return text.split(whereSeparator: { $0 == UInt8(ascii: "\n") || $0 == UInt8(ascii: "\r") })
        }
        var lines: [ArraySlice<UInt8>] = []
        var current: [UInt8] = []
        var inLine = false
        var escaped = false
        for byte in text {
            if escaped {
                current.append(byte)
                escaped = false
            } else if byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r") {
                if inLine { lines.append(current[...]) }
                current.removeAll(keepingCapacity: true)
                inLine = false
            } else if byte == UInt8(ascii: "\\") {
                escaped = true
                inLine = true
            } else {
                current.append(byte)
                inLine = true
            }
        }
        if escaped { throw .trailingBackslash }
        if inLine { lines.append(current[...]) }
        return lines
    }

    /// STATUS= text as systemd takes it: valid UTF-8 without surrogates and without the
    /// noncharacters (U+FDD0...U+FDEF, U+xxFFFE/F) that systemd's utf8_is_valid refuses.
    static func statusText(_ bytes: ArraySlice<UInt8>) -> String? {
        guard let text = String(validating: bytes, as: UTF8.self) else { return nil }
        for scalar in text.unicodeScalars {
            let value = scalar.value
            if (0xFDD0...0xFDEF).contains(value) || value & 0xFFFE == 0xFFFE { return nil }
        }
        return text
    }

    /// systemd's safe_atou64 (safe_atollu_full, base 0): leading whitespace, one `+` (or `-`
    /// for zero), `0x` hex, `0o` and C's leading-`0` octal, `0b` binary; nothing may follow the
    /// digits; overflow and negative values are refused (nil).
    static func unsignedNumber(_ value: ArraySlice<UInt8>) -> UInt64? {
        // systemd skips its WHITESPACE (" \t\n\r") before the 0b/0o check, strtoull all of isspace after it.
        let whitespace = { (byte: UInt8) in byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D }
        let isspace = { (byte: UInt8) in whitespace(byte) || byte == 0x0B || byte == 0x0C }
        var rest = value.drop(while: whitespace)
        var base: UInt64 = 0
        if rest.count >= 2, rest.first == UInt8(ascii: "0") {
            switch rest.dropFirst().first {
            case UInt8(ascii: "b"), UInt8(ascii: "B"): base = 2; rest = rest.dropFirst(2)
            case UInt8(ascii: "o"), UInt8(ascii: "O"): base = 8; rest = rest.dropFirst(2)
            default: break
            }
        }
        // strtoull: its own whitespace skip, a sign, then (base 0) the 0x / 0 prefixes.
        rest = rest.drop(while: isspace)
        var negative = false
        if let sign = rest.first, sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-") {
            negative = sign == UInt8(ascii: "-")
            rest = rest.dropFirst()
        }
        if base == 0 {
            if rest.count >= 3, rest.first == UInt8(ascii: "0"),
               rest.dropFirst().first.map({ $0 | 0x20 == UInt8(ascii: "x") }) == true,
               digitValue(rest.dropFirst(2).first!, base: 16) != nil {
                base = 16
                rest = rest.dropFirst(2)
            } else if rest.first == UInt8(ascii: "0") {
                base = 8
            } else {
                base = 10
            }
        }
        guard !rest.isEmpty else { return nil }
        var result: UInt64 = 0
        for byte in rest {
            guard let digit = digitValue(byte, base: base) else { return nil }
            let (scaled, overflow) = result.multipliedReportingOverflow(by: base)
            let (sum, carry) = scaled.addingReportingOverflow(digit)
            guard !overflow, !carry else { return nil }
            result = sum
        }
        if negative && result != 0 { return nil }
        return result
    }

    private static func digitValue(_ byte: UInt8, base: UInt64) -> UInt64? {
        let value: UInt64
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): value = UInt64(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "z"): value = UInt64(byte - UInt8(ascii: "a")) + 10
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = UInt64(byte - UInt8(ascii: "A")) + 10
        default: return nil
        }
        return value < base ? value : nil
    }
}

/// Why a whole notify datagram is refused (systemd ignores each of these datagrams too).
public enum NotifyMessageError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Over NotifyMessage.maximumSize bytes (the size it had).
    case tooLarge(Int)
    /// A NUL byte before the last byte (its offset): no part of it may reach a String.
    case embeddedNUL(offset: Int)
    /// The datagram ends in an unpaired backslash (systemd's line splitter fails on it).
    case trailingBackslash
    /// `BARRIER=1` with this many other lines: systemd drops such a datagram whole.
    case barrierWithOtherLines(Int)

    public var description: String {
        switch self {
        case .tooLarge(let size): "datagram of \(size) bytes, over \(NotifyMessage.maximumSize)"
        case .embeddedNUL(let offset): "NUL byte at offset \(offset)"
        case .trailingBackslash: "ends with an unpaired backslash"
        case .barrierWithOtherLines(let count): "BARRIER=1 with \(count) other line\(count == 1 ? "" : "s")"
        }
    }
}
