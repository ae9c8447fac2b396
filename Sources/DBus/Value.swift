/// One entry of a D-Bus dictionary (`{KV}`).
public struct DBusDictEntry: Sendable, Hashable {
    public var key: DBusValue
    public var value: DBusValue
    public init(_ key: DBusValue, _ value: DBusValue) {
        self.key = key
        self.value = value
    }
}

/// A D-Bus value of any type. Containers carry their element types, so empty arrays and
/// dictionaries have a signature too.
///
/// `unixFD`: an owned descriptor (`UnixFD`, closed when its last reference goes). A received one
/// is a duplicate owned by the receiver's value; a sent one is duplicated into the message while
/// it is built, so the sender keeps its own.
///
/// Only `variant` is `indirect` (the one case that holds a `DBusValue` directly; arrays already
/// box their elements), so scalars and strings are stored inline (24 bytes) rather than in a heap
/// box each. An earlier "crash with only `variant` indirect" was a stale incremental build, not
/// this layout (docs/dbus-layer.md, Notes).
public enum DBusValue: Sendable, Hashable {
    case byte(UInt8)
    case bool(Bool)
    case int16(Int16)
    case uint16(UInt16)
    case int32(Int32)
    case uint32(UInt32)
    case int64(Int64)
    case uint64(UInt64)
    case double(Double)
    case string(String)
    case objectPath(ObjectPath)
    case signature(Signature)
    case unixFD(UnixFD)
    /// An array of `element`-typed values.
    case array(DBusType, [DBusValue])
    case dictionary(key: DBusType, value: DBusType, [DBusDictEntry])
    case structure([DBusValue])
    indirect case variant(DBusValue)

    /// The type of this value.
    public var type: DBusType {
        switch self {
        case .byte: .byte
        case .bool: .bool
        case .int16: .int16
        case .uint16: .uint16
        case .int32: .int32
        case .uint32: .uint32
        case .int64: .int64
        case .uint64: .uint64
        case .double: .double
        case .string: .string
        case .objectPath: .objectPath
        case .signature: .signature
        case .unixFD: .unixFD
        case .array(let element, _): .array(element)
        case .dictionary(let k, let v, _): .dictionary(key: k, value: v)
        case .structure(let fields): .structure(fields.map(\.type))
        case .variant: .variant
        }
    }

    /// The signature of this value's type (its limits are checked when it is sent).
    public var signature: Signature { Signature(unchecked: [type]) }

    /// True when the value has type `type` all the way down (elements of arrays and
    /// dictionaries included).
    public func conforms(to type: DBusType) -> Bool {
        switch (self, type) {
        case (.byte, .byte), (.bool, .bool), (.int16, .int16), (.uint16, .uint16), (.int32, .int32),
            (.uint32, .uint32), (.int64, .int64), (.uint64, .uint64), (.double, .double),
            (.string, .string), (.objectPath, .objectPath), (.signature, .signature),
            (.unixFD, .unixFD), (.variant, .variant):
            return true
        case (.array(let element, let items), .array(let expected)):
            return element == expected && items.allSatisfy { $0.conforms(to: expected) }
        case (.dictionary(let k, let v, let entries), .dictionary(let ek, let ev)):
            return k == ek && v == ev && entries.allSatisfy { $0.key.conforms(to: k) && $0.value.conforms(to: v) }
        case (.structure(let fields), .structure(let types)):
            return fields.count == types.count && zip(fields, types).allSatisfy { $0.conforms(to: $1) }
        default:
            return false
        }
    }
}

// MARK: - Convenience constructors and accessors

extension DBusValue {
    /// `as`
    public static func stringArray(_ strings: [String]) -> DBusValue {
        .array(.string, strings.map { .string($0) })
    }

    /// `a{sv}`, the usual property and option map; keys in sorted order so output is stable.
    public static func variantDictionary(_ dict: [String: DBusValue]) -> DBusValue {
        .dictionary(key: .string, value: .variant,
                    dict.sorted { $0.key < $1.key }.map { DBusDictEntry(.string($0.key), .variant($0.value)) })
    }

    public var byteValue: UInt8? { if case .byte(let v) = self { v } else { nil } }
    public var boolValue: Bool? { if case .bool(let v) = self { v } else { nil } }
    public var int16Value: Int16? { if case .int16(let v) = self { v } else { nil } }
    public var uint16Value: UInt16? { if case .uint16(let v) = self { v } else { nil } }
    public var int32Value: Int32? { if case .int32(let v) = self { v } else { nil } }
    public var uint32Value: UInt32? { if case .uint32(let v) = self { v } else { nil } }
    public var int64Value: Int64? { if case .int64(let v) = self { v } else { nil } }
    public var uint64Value: UInt64? { if case .uint64(let v) = self { v } else { nil } }
    public var doubleValue: Double? { if case .double(let v) = self { v } else { nil } }
    public var stringValue: String? { if case .string(let v) = self { v } else { nil } }
    public var objectPathValue: ObjectPath? { if case .objectPath(let v) = self { v } else { nil } }
    public var signatureValue: Signature? { if case .signature(let v) = self { v } else { nil } }
    public var unixFDValue: UnixFD? { if case .unixFD(let v) = self { v } else { nil } }
    /// The inner value of a variant.
    public var variantValue: DBusValue? { if case .variant(let v) = self { v } else { nil } }
    public var structureValue: [DBusValue]? { if case .structure(let v) = self { v } else { nil } }
    /// The elements of an array (not of a dictionary).
    public var arrayValue: [DBusValue]? { if case .array(_, let v) = self { v } else { nil } }
    public var dictionaryEntries: [DBusDictEntry]? { if case .dictionary(_, _, let v) = self { v } else { nil } }
    /// `as` as `[String]`.
    public var stringArrayValue: [String]? {
        guard case .array(.string, let items) = self else { return nil }
        return items.compactMap(\.stringValue)
    }
    /// A dictionary with string keys (e.g. `a{sv}`), as a Swift dictionary; variants are kept.
    public var stringKeyedDictionary: [String: DBusValue]? {
        guard case .dictionary(.string, _, let entries) = self else { return nil }
        var out: [String: DBusValue] = [:]
        for e in entries { if let k = e.key.stringValue { out[k] = e.value } }
        return out
    }
    /// Removes one level of variant, if any.
    public var unwrappingVariant: DBusValue {
        if case .variant(let v) = self { v } else { self }
    }
}

extension DBusValue: CustomStringConvertible {
    /// A compact rendering close to busctl's, for logs and test failures.
    public var description: String {
        switch self {
        case .byte(let v): "y \(v)"
        case .bool(let v): "b \(v)"
        case .int16(let v): "n \(v)"
        case .uint16(let v): "q \(v)"
        case .int32(let v): "i \(v)"
        case .uint32(let v): "u \(v)"
        case .int64(let v): "x \(v)"
        case .uint64(let v): "t \(v)"
        case .double(let v): "d \(v)"
        case .string(let v): "s \"\(v)\""
        case .objectPath(let v): "o \"\(v)\""
        case .signature(let v): "g \"\(v)\""
        case .unixFD(let v): "h \(v)"
        case .array(let t, let items): "a\(t)[\(items.map(\.description).joined(separator: ", "))]"
        case .dictionary(let k, let v, let entries):
            "a{\(k)\(v)}{\(entries.map { "\($0.key): \($0.value)" }.joined(separator: ", "))}"
        case .structure(let fields): "(\(fields.map(\.description).joined(separator: ", ")))"
        case .variant(let v): "v <\(v)>"
        }
    }
}

extension [DBusValue] {
    /// The signature of these values as message arguments.
    public var signature: Signature { Signature(unchecked: map(\.type)) }
}

extension DBusType {
    /// Fixed-size numbers (and bool): libdbus moves arrays of them in one copy.
    var isFixedSize: Bool {
        switch self {
        case .byte, .bool, .int16, .uint16, .int32, .uint32, .int64, .uint64, .double: true
        default: false
        }
    }
}

extension DBusValue {
    /// True when this is a number of the fixed-size type `type`.
    @inline(__always) func isFixedSize(_ type: DBusType) -> Bool {
        switch (self, type) {
        case (.byte, .byte), (.bool, .bool), (.int16, .int16), (.uint16, .uint16), (.int32, .int32),
            (.uint32, .uint32), (.int64, .int64), (.uint64, .uint64), (.double, .double):
            true
        default:
            false
        }
    }
}

// MARK: - Validation before sending

enum ValueValidation {
    /// Checks that `values` can be sent as a message body: well-formed containers, strings
    /// without NUL, signatures within limits, nesting within libdbus' limits. libdbus aborts or
    /// emits a message its peer rejects (and is then disconnected) otherwise.
    static func validateBody(_ values: [DBusValue]) throws(DBusConnectionError) {
        let sig = try Signature(values.map(\.type))
        _ = sig
        for v in values { try validate(v, depth: 0) }
    }

    private static func validate(_ value: DBusValue, depth: Int) throws(DBusConnectionError) {
        guard depth <= SignatureLimits.maximumTotalDepth else {
            throw DBusConnectionError(.invalidArgument, "value nested too deeply")
        }
        switch value {
        case .string(let s):
            guard !s.utf8.contains(0) else {
                throw DBusConnectionError(.invalidArgument, "string contains a NUL byte")
            }
        case .unixFD(let fd):
            guard fd.isOpen else { throw DBusConnectionError(.invalidArgument, "file descriptor already closed or taken") }
        case .array(let element, let items):
            if element.isFixedSize {
                // Numbers need no deeper checks: only their type.
                guard items.allSatisfy({ $0.isFixedSize(element) }) else {
                    throw DBusConnectionError(.invalidArgument, "array of '\(element)' holds another type")
                }
                return
            }
            for item in items {
                guard item.conforms(to: element) else {
                    throw DBusConnectionError(.invalidArgument, "array of '\(element)' holds a '\(item.type)'")
                }
                try validate(item, depth: depth + 1)
            }
        case .dictionary(let k, let v, let entries):
            guard k.isBasic else { throw DBusConnectionError(.invalidArgument, "dictionary key type '\(k)' is not basic") }
            for e in entries {
                guard e.key.conforms(to: k), e.value.conforms(to: v) else {
                    throw DBusConnectionError(.invalidArgument, "dictionary a{\(k)\(v)} holds a {\(e.key.type)\(e.value.type)}")
                }
                try validate(e.key, depth: depth + 2)
                try validate(e.value, depth: depth + 2)
            }
        case .structure(let fields):
            guard !fields.isEmpty else { throw DBusConnectionError(.invalidArgument, "empty structure") }
            for f in fields { try validate(f, depth: depth + 1) }
        case .variant(let inner):
            let t = inner.type
            try t.validate()
            guard t.signature.utf8.count <= SignatureLimits.maximumLength else {
                throw DBusConnectionError(.invalidArgument, "variant signature longer than 255 bytes")
            }
            try validate(inner, depth: depth + 1)
        default:
            break
        }
    }

    /// The values as `(name, type)` argument lists expect them, or an `InvalidArgs` explanation.
    static func check(_ values: [DBusValue], against types: [DBusType]) -> Bool {
        values.count == types.count && zip(values, types).allSatisfy { $0.conforms(to: $1) }
    }
}
