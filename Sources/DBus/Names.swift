// Validated D-Bus names and object paths (D-Bus specification, "Valid Names").
//
// libdbus aborts the process when handed an invalid name or path, so every name that reaches
// libdbus from Swift passes through one of these validators first.

/// An object path such as `/org/example/BgWorker`: `/`, or `/`-separated non-empty elements of
/// `[A-Za-z0-9_]`, with no trailing `/`.
public struct ObjectPath: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let rawValue: String

    public init(_ string: String) throws(DBusConnectionError) {
        guard NameRules.isValidObjectPath(string) else {
            throw DBusConnectionError(.invalidArgument, "invalid object path '\(string)'")
        }
        rawValue = string
    }

    /// For strings libdbus has already validated (paths of received messages).
    init(trusted string: String) { rawValue = string }

    public static let root = ObjectPath(trusted: "/")

    public var description: String { rawValue }
    public static func < (a: ObjectPath, b: ObjectPath) -> Bool { a.rawValue < b.rawValue }

    /// `child` appended as one more element; `element` must be a valid path element.
    public func appending(_ element: String) throws(DBusConnectionError) -> ObjectPath {
        try ObjectPath(rawValue == "/" ? "/\(element)" : "\(rawValue)/\(element)")
    }

    /// True when `self` lies strictly below `ancestor`.
    public func isDescendant(of ancestor: ObjectPath) -> Bool {
        if ancestor.rawValue == "/" { return rawValue != "/" }
        return rawValue.hasPrefix(ancestor.rawValue + "/")
    }

    /// Escapes an arbitrary string into one path element as systemd does (`sd_bus_path_encode`):
    /// every byte outside `[A-Za-z0-9]`, and a digit in first position, becomes `_` and two
    /// lowercase hex digits; the empty string becomes `_`.
    public static func escapeElement(_ string: String) -> String {
        if string.isEmpty { return "_" }
        var out = ""
        for (i, byte) in string.utf8.enumerated() {
            let isAlpha = (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
            let isDigit = byte >= 0x30 && byte <= 0x39
            if isAlpha || (isDigit && i > 0) {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                let hex = Array("0123456789abcdef")
                out.append("_")
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0xF)])
            }
        }
        return out
    }
}

/// A bus name: unique (`:1.42`) or well-known (`org.example.BgWorker`).
public struct BusName: Sendable, Hashable, CustomStringConvertible {
    public let rawValue: String
    public init(_ string: String) throws(DBusConnectionError) {
        guard NameRules.isValidBusName(string) else {
            throw DBusConnectionError(.invalidArgument, "invalid bus name '\(string)'")
        }
        rawValue = string
    }
    public var isUnique: Bool { rawValue.hasPrefix(":") }
    public var description: String { rawValue }
}

/// An interface name such as `org.example.BgWorker.Worker`.
public struct InterfaceName: Sendable, Hashable, CustomStringConvertible {
    public let rawValue: String
    public init(_ string: String) throws(DBusConnectionError) {
        guard NameRules.isValidInterfaceName(string) else {
            throw DBusConnectionError(.invalidArgument, "invalid interface name '\(string)'")
        }
        rawValue = string
    }
    public var description: String { rawValue }
}

/// A member (method or signal) or property name such as `WorkerStateChanged`.
public struct MemberName: Sendable, Hashable, CustomStringConvertible {
    public let rawValue: String
    public init(_ string: String) throws(DBusConnectionError) {
        guard NameRules.isValidMemberName(string) else {
            throw DBusConnectionError(.invalidArgument, "invalid member name '\(string)'")
        }
        rawValue = string
    }
    public var description: String { rawValue }
}

/// An error name such as `org.example.BgWorker.Error.NoSuchWorker` (interface-name rules).
public struct ErrorName: Sendable, Hashable, CustomStringConvertible {
    public let rawValue: String
    public init(_ string: String) throws(DBusConnectionError) {
        guard NameRules.isValidInterfaceName(string) else {
            throw DBusConnectionError(.invalidArgument, "invalid error name '\(string)'")
        }
        rawValue = string
    }
    public var description: String { rawValue }
}

/// The validation rules themselves, on UTF-8 bytes.
public enum NameRules {
    static let maximumNameLength = 255

    @inline(__always) static func isAlpha(_ b: UInt8) -> Bool {
        (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
    }
    @inline(__always) static func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }
    @inline(__always) static func isElementByte(_ b: UInt8) -> Bool {
        isAlpha(b) || isDigit(b) || b == 0x5F
    }

    public static func isValidObjectPath(_ s: String) -> Bool {
        let bytes = Array(s.utf8)
        guard bytes.first == 0x2F else { return false }
        if bytes.count == 1 { return true }
        guard bytes.last != 0x2F else { return false }
        var previousWasSlash = false
        for b in bytes {
            if b == 0x2F {
                if previousWasSlash { return false }
                previousWasSlash = true
            } else {
                guard isElementByte(b) else { return false }
                previousWasSlash = false
            }
        }
        return true
    }

    public static func isValidMemberName(_ s: String) -> Bool {
        let bytes = Array(s.utf8)
        guard !bytes.isEmpty, bytes.count <= maximumNameLength, !isDigit(bytes[0]) else { return false }
        return bytes.allSatisfy(isElementByte)
    }

    /// Interface and error names: at least two `.`-separated elements of `[A-Za-z0-9_]`, none
    /// empty or starting with a digit.
    public static func isValidInterfaceName(_ s: String) -> Bool {
        let bytes = Array(s.utf8)
        guard !bytes.isEmpty, bytes.count <= maximumNameLength else { return false }
        let elements = bytes.split(separator: 0x2E, omittingEmptySubsequences: false)
        guard elements.count >= 2 else { return false }
        for e in elements {
            guard let first = e.first, !isDigit(first), e.allSatisfy(isElementByte) else { return false }
        }
        return true
    }

    /// Unique names (`:` then elements that may start with a digit) and well-known names
    /// (elements of `[A-Za-z0-9_-]` not starting with a digit), at least two elements.
    public static func isValidBusName(_ s: String) -> Bool {
        var bytes = Array(s.utf8)
        guard !bytes.isEmpty, bytes.count <= maximumNameLength else { return false }
        let unique = bytes[0] == 0x3A
        if unique { bytes.removeFirst() }
        let elements = bytes.split(separator: 0x2E, omittingEmptySubsequences: false)
        guard elements.count >= 2 else { return false }
        for e in elements {
            guard let first = e.first else { return false }
            if !unique && isDigit(first) { return false }
            guard e.allSatisfy({ isElementByte($0) || $0 == 0x2D }) else { return false }
        }
        return true
    }
}
