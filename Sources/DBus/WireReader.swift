import CDBus

// A received message's body read straight from its wire bytes, guided by its signature, without
// libdbus' per-value iterators (which, with a signature fetched and parsed for every array, cost
// a client ~160 ms for a GetManagedObjects reply of 9,000 objects). libdbus has validated the
// bytes when it read the message; every read here is bounds-checked all the same, and anything
// unexpected is `invalidMessage`, never trusted.

struct WireReader {
    /// Not an error: the body holds a unix fd (an index into the message's descriptors, which
    /// only libdbus' iterators hand out), so the caller reads it with them.
    struct NeedsIterators: Error {}

    private let bytes: UnsafeRawBufferPointer
    private let bigEndian: Bool
    private var offset = 0
    /// Parsed variant signatures: a large body repeats a few.
    private var variantTypes: [[UInt8]: DBusType] = [:]

    /// `bytes`: the body, which starts on an 8-byte boundary of the message.
    init(body bytes: UnsafeRawBufferPointer, bigEndian: Bool) {
        self.bytes = bytes
        self.bigEndian = bigEndian
    }

    /// Reads the whole body as `types`.
    mutating func readAll(_ types: [DBusType]) throws -> [DBusValue] {
        var values: [DBusValue] = []
        values.reserveCapacity(types.count)
        for t in types { values.append(try read(t, depth: 0)) }
        guard offset == bytes.count else { throw Self.invalid("\(bytes.count - offset) bytes after the last argument") }
        return values
    }

    private static func invalid(_ why: String) -> DBusConnectionError {
        DBusConnectionError(.invalidMessage, why)
    }

    private mutating func align(_ alignment: Int) throws {
        let rest = offset % alignment
        if rest != 0 { offset += alignment - rest }
        guard offset <= bytes.count else { throw Self.invalid("body ends inside padding") }
    }

    private mutating func fixed<T: FixedWidthInteger>(_: T.Type) throws -> T {
        try align(MemoryLayout<T>.size)
        guard bytes.count - offset >= MemoryLayout<T>.size else { throw Self.invalid("body ends inside a number") }
        let raw = bytes.loadUnaligned(fromByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
        return bigEndian ? T(bigEndian: raw) : T(littleEndian: raw)
    }

    /// `count` bytes and the NUL after them.
    private mutating func text(_ count: Int) throws -> UnsafeRawBufferPointer {
        guard count >= 0, bytes.count - offset > count, bytes[offset + count] == 0 else { throw Self.invalid("bad string length") }
        let slice = UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)])
        offset += count + 1
        return slice
    }

    private mutating func string() throws -> String {
        let slice = try text(Int(try fixed(UInt32.self)))
        return String(decoding: slice, as: UTF8.self)
    }

    private mutating func signatureBytes() throws -> UnsafeRawBufferPointer {
        guard offset < bytes.count else { throw Self.invalid("body ends before a signature") }
        let count = Int(bytes[offset])
        offset += 1
        return try text(count)
    }

    private mutating func read(_ type: DBusType, depth: Int) throws -> DBusValue {
        // libdbus refuses deeper bodies on receipt; a bound of our own all the same (the stack).
        guard depth <= 2 * SignatureLimits.maximumTotalDepth else { throw Self.invalid("value nested too deeply") }
        switch type {
        case .byte:
            guard offset < bytes.count else { throw Self.invalid("body ends before a byte") }
            offset += 1
            return .byte(bytes[offset - 1])
        case .bool:
            let v = try fixed(UInt32.self)
            guard v <= 1 else { throw Self.invalid("boolean \(v)") }
            return .bool(v == 1)
        case .int16: return .int16(try fixed(Int16.self))
        case .uint16: return .uint16(try fixed(UInt16.self))
        case .int32: return .int32(try fixed(Int32.self))
        case .uint32: return .uint32(try fixed(UInt32.self))
        case .int64: return .int64(try fixed(Int64.self))
        case .uint64: return .uint64(try fixed(UInt64.self))
        case .double: return .double(Double(bitPattern: try fixed(UInt64.self)))
        case .string: return .string(try string())
        case .objectPath:
            let s = try string()
            guard NameRules.isValidObjectPath(s) else { throw Self.invalid("invalid object path '\(s)'") }
            return .objectPath(ObjectPath(trusted: s))
        case .signature:
            let s = String(decoding: try signatureBytes(), as: UTF8.self)
            do { return .signature(try Signature(s)) } catch { throw Self.invalid("invalid signature '\(s)'") }
        case .unixFD:
            throw NeedsIterators()
        case .variant:
            let signature = try signatureBytes()
            let inner = try variantType(signature)
            return .variant(try read(inner, depth: depth + 1))
        case .array(let element):
            let end = try arrayEnd(elementAlignment: element.alignment)
            var items: [DBusValue] = []
            while offset < end { items.append(try read(element, depth: depth + 1)) }
            guard offset == end else { throw Self.invalid("array element runs past the array's end") }
            return .array(element, items)
        case .dictionary(let k, let v):
            let end = try arrayEnd(elementAlignment: 8)
            var entries: [DBusDictEntry] = []
            while offset < end {
                try align(8)
                let key = try read(k, depth: depth + 2)
                entries.append(DBusDictEntry(key, try read(v, depth: depth + 2)))
            }
            guard offset == end else { throw Self.invalid("dict entry runs past the array's end") }
            return .dictionary(key: k, value: v, entries)
        case .structure(let fields):
            guard !fields.isEmpty else { throw Self.invalid("empty structure") }
            try align(8)
            var values: [DBusValue] = []
            values.reserveCapacity(fields.count)
            for f in fields { values.append(try read(f, depth: depth + 1)) }
            return .structure(values)
        }
    }

    /// Reads an array's length and the padding before its first element; returns its end.
    private mutating func arrayEnd(elementAlignment: Int) throws -> Int {
        let length = Int(try fixed(UInt32.self))
        try align(elementAlignment)
        guard length <= bytes.count - offset else { throw Self.invalid("array of \(length) bytes past the body's end") }
        return offset + length
    }

    private mutating func variantType(_ signature: UnsafeRawBufferPointer) throws -> DBusType {
        // Most variants hold one basic type: no copy of the signature, no lookup.
        if signature.count == 1, let single = DBusType(singleCode: signature[0]) { return single }
        let key = Array(signature)
        if let known = variantTypes[key] { return known }
        var parser = SignatureParser(key)
        let types: [DBusType]
        do { types = try parser.parseAll() } catch { throw Self.invalid("variant signature '\(String(decoding: key, as: UTF8.self))' does not parse") }
        guard types.count == 1 else { throw Self.invalid("variant signature '\(String(decoding: key, as: UTF8.self))' is not one type") }
        variantTypes[key] = types[0]
        return types[0]
    }
}

extension Marshal {
    /// The body of a received message read from its wire bytes (`WireReader`); nil when it
    /// holds unix fds, which only libdbus' iterators can hand out.
    static func readFromWire(_ message: OpaquePointer) throws(DBusConnectionError) -> [DBusValue]? {
        let signature = dbus_message_get_signature(message).map { String(cString: $0) } ?? ""
        guard !signature.isEmpty else { return [] }
        guard !signature.utf8.contains(TypeCode.unixFD) else { return nil }
        let types: [DBusType]
        do { types = try Signature(signature).types } catch { throw DBusConnectionError(.invalidMessage, "received signature '\(signature)' does not parse") }
        var raw: UnsafeMutablePointer<CChar>? = nil
        var length: Int32 = 0
        guard dbus_message_marshal(message, &raw, &length) != 0, let raw else {
            throw DBusConnectionError(.noMemory, "cannot copy a received message")
        }
        defer { dbus_free(raw) }
        let whole = UnsafeRawBufferPointer(start: raw, count: Int(length))
        // The fixed header: byte order ('l' or 'B'), type, flags, version, body length.
        guard whole.count >= 16 else { throw DBusConnectionError(.invalidMessage, "message shorter than its header") }
        let bigEndian = whole[0] == UInt8(ascii: "B")
        let rawLength = whole.loadUnaligned(fromByteOffset: 4, as: UInt32.self)
        let bodyLength = Int(bigEndian ? UInt32(bigEndian: rawLength) : UInt32(littleEndian: rawLength))
        guard bodyLength <= whole.count - 16 else { throw DBusConnectionError(.invalidMessage, "body longer than the message") }
        var reader = WireReader(body: UnsafeRawBufferPointer(rebasing: whole[(whole.count - bodyLength)...]), bigEndian: bigEndian)
        do {
            return try reader.readAll(types)
        } catch is WireReader.NeedsIterators {
            return nil
        } catch let error as DBusConnectionError {
            throw error
        } catch {
            throw DBusConnectionError(.invalidMessage, "\(error)")
        }
    }
}
