// The systemd journal's native protocol through libsystemd's sd_journal_sendv (the iovec form:
// sd_journal_send is variadic and cannot be called from Swift).
import CSystemd
import Glibc

public enum Journal {
    /// Where journald listens for native messages; libsystemd sends there.
    public static let socketPath = "/run/systemd/journal/socket"

    /// Whether journald runs here (its socket exists).
    public static var isAvailable: Bool { access(socketPath, F_OK) == 0 }

    /// Sends one entry. `fields` are `NAME=value` (NAME: `[A-Z0-9_]`, not starting with `_`);
    /// values may hold newlines and any bytes. Returns 0 or a negative errno.
    @discardableResult
    public static func send(_ fields: [String]) -> Int32 {
        var bytes: [UInt8] = []
        var ranges: [Range<Int>] = []
        ranges.reserveCapacity(fields.count)
        for field in fields {
            let start = bytes.count
            bytes.append(contentsOf: field.utf8)
            ranges.append(start..<bytes.count)
        }
        return bytes.withUnsafeMutableBytes { raw in
            let base = raw.baseAddress
            var vectors = ranges.map { range in
                iovec(iov_base: base.map { $0 + range.lowerBound }, iov_len: range.count)
            }
            return sd_journal_sendv(&vectors, Int32(vectors.count))
        }
    }

    /// Turns a metadata key into a journal field name: upper case, `[A-Z0-9_]` only, not
    /// starting with `_` or a digit (journald drops such fields), at most 64 bytes.
    public static func fieldName(_ key: String) -> String {
        var name = ""
        for byte in key.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"): name.append(Character(Unicode.Scalar(byte - 32)))
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                name.append(Character(Unicode.Scalar(byte)))
            default: name.append("_")
            }
        }
        while name.first == "_" { name.removeFirst() }
        if name.isEmpty || name.first!.isNumber { name = "F" + name }
        return String(name.prefix(64))
    }
}

/// syslog priorities (`PRIORITY=` in the journal, `<N>` prefixes on stderr).
public enum SyslogPriority {
    public static let emergency: Int32 = 0
    public static let alert: Int32 = 1
    public static let critical: Int32 = 2
    public static let error: Int32 = 3
    public static let warning: Int32 = 4
    public static let notice: Int32 = 5
    public static let info: Int32 = 6
    public static let debug: Int32 = 7
}
