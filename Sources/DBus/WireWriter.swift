// Values written straight into D-Bus wire format (little-endian), without libdbus' per-value
// iterators: for replies too large to build value by value (GetManagedObjects with thousands of
// objects). The bytes are what `Marshal.append` would produce; `WireWriterTests` compares the two.

struct WireWriter {
    var bytes: [UInt8] = []

    init(capacity: Int = 0) {
        bytes.reserveCapacity(capacity)
    }

    /// Padding is relative to the start of `bytes`, which must itself sit at an 8-byte boundary
    /// of the message body (the body's start, or a dict entry's or struct's start).
    mutating func pad(to alignment: Int) {
        let rest = bytes.count % alignment
        if rest != 0 { bytes.append(contentsOf: repeatElement(0, count: alignment - rest)) }
    }

    mutating func fixed<T: FixedWidthInteger>(_ value: T) {
        pad(to: MemoryLayout<T>.size)
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func string(_ s: String) {
        var s = s
        s.withUTF8 { utf8 in
            fixed(UInt32(utf8.count))
            bytes.append(contentsOf: utf8)
        }
        bytes.append(0)
    }

    /// A signature of one complete type (a variant's), from the type itself.
    mutating func signature(of type: DBusType) {
        let lengthAt = bytes.count
        bytes.append(0)
        appendCodes(type)
        bytes[lengthAt] = UInt8(truncatingIfNeeded: bytes.count - lengthAt - 1)
        bytes.append(0)
    }

    private mutating func appendCodes(_ type: DBusType) {
        switch type {
        case .array(let element):
            bytes.append(TypeCode.array)
            appendCodes(element)
        case .dictionary(let key, let value):
            bytes.append(TypeCode.array)
            bytes.append(TypeCode.dictOpen)
            appendCodes(key)
            appendCodes(value)
            bytes.append(TypeCode.dictClose)
        case .structure(let fields):
            bytes.append(TypeCode.structOpen)
            for f in fields { appendCodes(f) }
            bytes.append(TypeCode.structClose)
        default:
            bytes.append(type.code)
        }
    }

    /// Opens an array: its length is written by `endArray` with what came after the padding to
    /// the first element, as the specification counts it (also when the array is empty).
    mutating func beginArray(elementAlignment: Int) -> (lengthAt: Int, start: Int) {
        fixed(UInt32(0))
        let lengthAt = bytes.count - 4
        pad(to: elementAlignment)
        return (lengthAt, bytes.count)
    }

    mutating func endArray(_ array: (lengthAt: Int, start: Int)) {
        let length = UInt32(truncatingIfNeeded: bytes.count - array.start).littleEndian
        withUnsafeBytes(of: length) { raw in
            for i in 0..<4 { bytes[array.lengthAt + i] = raw[i] }
        }
    }

    /// Writes `value`; false (with `bytes` then unusable) for a unix fd, which is an index into
    /// the message's descriptors and so has no meaning in bytes alone.
    mutating func write(_ value: DBusValue) -> Bool {
        switch value {
        case .byte(let v): bytes.append(v)
        case .bool(let v): fixed(UInt32(v ? 1 : 0))
        case .int16(let v): fixed(v)
        case .uint16(let v): fixed(v)
        case .int32(let v): fixed(v)
        case .uint32(let v): fixed(v)
        case .int64(let v): fixed(v)
        case .uint64(let v): fixed(v)
        case .double(let v): fixed(v.bitPattern)
        case .string(let s): string(s)
        case .objectPath(let p): string(p.rawValue)
        case .signature(let s):
            var raw = s.rawValue
            raw.withUTF8 { utf8 in
                bytes.append(UInt8(truncatingIfNeeded: utf8.count))
                bytes.append(contentsOf: utf8)
            }
            bytes.append(0)
        case .unixFD:
            return false
        case .array(let element, let items):
            let array = beginArray(elementAlignment: element.alignment)
            for item in items where !write(item) { return false }
            endArray(array)
        case .dictionary(_, _, let entries):
            let array = beginArray(elementAlignment: 8)
            for e in entries {
                pad(to: 8)
                guard write(e.key), write(e.value) else { return false }
            }
            endArray(array)
        case .structure(let fields):
            pad(to: 8)
            for f in fields where !write(f) { return false }
        case .variant(let inner):
            signature(of: inner.type)
            return write(inner)
        }
        return true
    }
}

extension DBusType {
    /// The boundary a value of this type starts on in the wire format.
    var alignment: Int {
        switch self {
        case .byte, .signature, .variant: 1
        case .int16, .uint16: 2
        case .bool, .int32, .uint32, .string, .objectPath, .unixFD, .array, .dictionary: 4
        case .int64, .uint64, .double, .structure: 8
        }
    }
}
