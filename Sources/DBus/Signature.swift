/// One complete D-Bus type, e.g. `s`, `a{sv}`, `(ussa(ii))`.
public indirect enum DBusType: Sendable, Hashable, CustomStringConvertible {
    case byte, bool, int16, uint16, int32, uint32, int64, uint64, double
    case string, objectPath, signature, unixFD
    case variant
    case array(DBusType)
    /// `a{KV}`: an array of dict entries; `key` must be a basic type.
    case dictionary(key: DBusType, value: DBusType)
    case structure([DBusType])

    /// Parses exactly one complete type.
    public init(_ string: String) throws(DBusConnectionError) {
        let types = try Signature(string).types
        guard types.count == 1 else {
            throw DBusConnectionError(.invalidArgument, "'\(string)' is not a single complete type")
        }
        self = types[0]
    }

    /// The type code of this type (the first character of its signature).
    var code: UInt8 {
        switch self {
        case .byte: TypeCode.byte
        case .bool: TypeCode.bool
        case .int16: TypeCode.int16
        case .uint16: TypeCode.uint16
        case .int32: TypeCode.int32
        case .uint32: TypeCode.uint32
        case .int64: TypeCode.int64
        case .uint64: TypeCode.uint64
        case .double: TypeCode.double
        case .string: TypeCode.string
        case .objectPath: TypeCode.objectPath
        case .signature: TypeCode.signature
        case .unixFD: TypeCode.unixFD
        case .variant: TypeCode.variant
        case .array, .dictionary: TypeCode.array
        case .structure: TypeCode.structOpen
        }
    }

    /// Basic types are the fixed ones and the string-like ones; only they may be dict keys.
    public var isBasic: Bool {
        switch self {
        case .variant, .array, .dictionary, .structure: false
        default: true
        }
    }

    public var signature: String {
        var s = ""
        appendSignature(to: &s)
        return s
    }

    public var description: String { signature }

    func appendSignature(to s: inout String) {
        switch self {
        case .array(let element):
            s.append("a")
            element.appendSignature(to: &s)
        case .dictionary(let key, let value):
            s.append("a{")
            key.appendSignature(to: &s)
            value.appendSignature(to: &s)
            s.append("}")
        case .structure(let fields):
            s.append("(")
            for f in fields { f.appendSignature(to: &s) }
            s.append(")")
        default:
            s.unicodeScalars.append(Unicode.Scalar(code))
        }
    }

    /// Checks the limits the specification puts on a single type (no empty structs, basic dict
    /// keys, at most 32 nested arrays and 32 nested structs).
    func validate() throws(DBusConnectionError) {
        try validate(arrayDepth: 0, structDepth: 0)
    }

    private func validate(arrayDepth: Int, structDepth: Int) throws(DBusConnectionError) {
        switch self {
        case .array(let element):
            guard arrayDepth < SignatureLimits.maximumArrayDepth else {
                throw DBusConnectionError(.invalidArgument, "arrays nested too deeply")
            }
            try element.validate(arrayDepth: arrayDepth + 1, structDepth: structDepth)
        case .dictionary(let key, let value):
            guard arrayDepth < SignatureLimits.maximumArrayDepth, structDepth < SignatureLimits.maximumStructDepth else {
                throw DBusConnectionError(.invalidArgument, "containers nested too deeply")
            }
            guard key.isBasic else {
                throw DBusConnectionError(.invalidArgument, "dictionary key type '\(key)' is not basic")
            }
            try value.validate(arrayDepth: arrayDepth + 1, structDepth: structDepth + 1)
        case .structure(let fields):
            guard !fields.isEmpty else { throw DBusConnectionError(.invalidArgument, "empty structure") }
            guard structDepth < SignatureLimits.maximumStructDepth else {
                throw DBusConnectionError(.invalidArgument, "structures nested too deeply")
            }
            for f in fields { try f.validate(arrayDepth: arrayDepth, structDepth: structDepth + 1) }
        default:
            break
        }
    }
}

enum SignatureLimits {
    static let maximumLength = 255
    static let maximumArrayDepth = 32
    static let maximumStructDepth = 32
    /// Total container depth of a value, variants included (libdbus' body validation limit).
    static let maximumTotalDepth = 64
}

enum TypeCode {
    static let byte = UInt8(ascii: "y")
    static let bool = UInt8(ascii: "b")
    static let int16 = UInt8(ascii: "n")
    static let uint16 = UInt8(ascii: "q")
    static let int32 = UInt8(ascii: "i")
    static let uint32 = UInt8(ascii: "u")
    static let int64 = UInt8(ascii: "x")
    static let uint64 = UInt8(ascii: "t")
    static let double = UInt8(ascii: "d")
    static let string = UInt8(ascii: "s")
    static let objectPath = UInt8(ascii: "o")
    static let signature = UInt8(ascii: "g")
    static let unixFD = UInt8(ascii: "h")
    static let variant = UInt8(ascii: "v")
    static let array = UInt8(ascii: "a")
    static let structOpen = UInt8(ascii: "(")
    static let structClose = UInt8(ascii: ")")
    static let dictOpen = UInt8(ascii: "{")
    static let dictClose = UInt8(ascii: "}")
    // What libdbus' iterators report for containers.
    static let structure = UInt8(ascii: "r")
    static let dictEntry = UInt8(ascii: "e")
}

/// A signature: a sequence of complete types, at most 255 bytes (e.g. the argument types of a
/// method, `sa{sv}as`).
public struct Signature: Sendable, Hashable, CustomStringConvertible {
    public let rawValue: String
    public let types: [DBusType]

    public init(_ string: String) throws(DBusConnectionError) {
        var parser = SignatureParser(Array(string.utf8))
        types = try parser.parseAll()
        rawValue = string
    }

    public init(_ types: [DBusType]) throws(DBusConnectionError) {
        var s = ""
        for t in types {
            try t.validate()
            t.appendSignature(to: &s)
        }
        guard s.utf8.count <= SignatureLimits.maximumLength else {
            throw DBusConnectionError(.invalidArgument, "signature longer than 255 bytes")
        }
        rawValue = s
        self.types = types
    }

    init(unchecked types: [DBusType]) {
        var s = ""
        for t in types { t.appendSignature(to: &s) }
        rawValue = s
        self.types = types
    }

    public static let empty = Signature(unchecked: [])

    public var description: String { rawValue }
    public var isEmpty: Bool { types.isEmpty }
}

extension DBusType {
    /// The type a one-letter signature names (a basic type or `v`); nil for any other letter.
    init?(singleCode c: UInt8) {
        switch c {
        case TypeCode.byte: self = .byte
        case TypeCode.bool: self = .bool
        case TypeCode.int16: self = .int16
        case TypeCode.uint16: self = .uint16
        case TypeCode.int32: self = .int32
        case TypeCode.uint32: self = .uint32
        case TypeCode.int64: self = .int64
        case TypeCode.uint64: self = .uint64
        case TypeCode.double: self = .double
        case TypeCode.string: self = .string
        case TypeCode.objectPath: self = .objectPath
        case TypeCode.signature: self = .signature
        case TypeCode.unixFD: self = .unixFD
        case TypeCode.variant: self = .variant
        default: return nil
        }
    }
}

struct SignatureParser {
    let bytes: [UInt8]
    var index = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func parseAll() throws(DBusConnectionError) -> [DBusType] {
        guard bytes.count <= SignatureLimits.maximumLength else {
            throw DBusConnectionError(.invalidArgument, "signature longer than 255 bytes")
        }
        var types: [DBusType] = []
        while index < bytes.count {
            types.append(try parseOne(arrayDepth: 0, structDepth: 0))
        }
        return types
    }

    private func fail(_ why: String) -> DBusConnectionError {
        DBusConnectionError(.invalidArgument, "invalid signature '\(String(decoding: bytes, as: UTF8.self))': \(why)")
    }

    private mutating func parseOne(arrayDepth: Int, structDepth: Int) throws(DBusConnectionError) -> DBusType {
        guard index < bytes.count else { throw fail("incomplete type") }
        let c = bytes[index]
        index += 1
        if let single = DBusType(singleCode: c) { return single }
        switch c {
        case TypeCode.array:
            guard arrayDepth < SignatureLimits.maximumArrayDepth else { throw fail("arrays nested too deeply") }
            if index < bytes.count && bytes[index] == TypeCode.dictOpen {
                index += 1
                guard structDepth < SignatureLimits.maximumStructDepth else { throw fail("nested too deeply") }
                let key = try parseOne(arrayDepth: arrayDepth + 1, structDepth: structDepth + 1)
                guard key.isBasic else { throw fail("dictionary key is not a basic type") }
                let value = try parseOne(arrayDepth: arrayDepth + 1, structDepth: structDepth + 1)
                guard index < bytes.count, bytes[index] == TypeCode.dictClose else {
                    throw fail("dictionary entry must have exactly two types")
                }
                index += 1
                return .dictionary(key: key, value: value)
            }
            return .array(try parseOne(arrayDepth: arrayDepth + 1, structDepth: structDepth))
        case TypeCode.structOpen:
            guard structDepth < SignatureLimits.maximumStructDepth else { throw fail("structures nested too deeply") }
            var fields: [DBusType] = []
            while true {
                guard index < bytes.count else { throw fail("unclosed structure") }
                if bytes[index] == TypeCode.structClose {
                    index += 1
                    break
                }
                fields.append(try parseOne(arrayDepth: arrayDepth, structDepth: structDepth + 1))
            }
            guard !fields.isEmpty else { throw fail("empty structure") }
            return .structure(fields)
        default:
            throw fail("unexpected '\(Unicode.Scalar(c))'")
        }
    }
}
