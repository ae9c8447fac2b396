import CDBus
import Glibc

// Moving values in and out of libdbus messages with the iterator API. Runs on the connection
// thread only (the message pointers never leave it).

enum Marshal {
    /// Appends `values` (already checked by `ValueValidation.validateBody`) to `message`.
    static func append(_ values: [DBusValue], to message: OpaquePointer) throws(DBusConnectionError) {
        var iter = DBusMessageIter()
        dbus_message_iter_init_append(message, &iter)
        for v in values { try append(v, to: &iter) }
    }

    private static func noMemory() -> DBusConnectionError {
        DBusConnectionError(.noMemory, "libdbus could not append a value")
    }

    private static func appendBasic<T: BitwiseCopyable>(_ iter: inout DBusMessageIter, _ code: UInt8, _ value: T) throws(DBusConnectionError) {
        var v = value
        guard dbus_message_iter_append_basic(&iter, Int32(code), &v) != 0 else { throw noMemory() }
    }

    private static func appendString(_ iter: inout DBusMessageIter, _ code: UInt8, _ s: String) throws(DBusConnectionError) {
        let ok = s.withCString { p -> Bool in
            var ptr: UnsafePointer<CChar>? = p
            return dbus_message_iter_append_basic(&iter, Int32(code), &ptr) != 0
        }
        guard ok else { throw noMemory() }
    }

    /// Opens a container, fills it with `body`, closes it; abandons it on failure so the
    /// message stays consistent.
    private static func container(
        _ iter: inout DBusMessageIter, _ code: UInt8, _ signature: String?,
        _ body: (inout DBusMessageIter) throws(DBusConnectionError) -> Void
    ) throws(DBusConnectionError) {
        var sub = DBusMessageIter()
        let opened: Bool
        if let signature {
            opened = signature.withCString { dbus_message_iter_open_container(&iter, Int32(code), $0, &sub) != 0 }
        } else {
            opened = dbus_message_iter_open_container(&iter, Int32(code), nil, &sub) != 0
        }
        guard opened else { throw noMemory() }
        do {
            try body(&sub)
        } catch {
            dbus_message_iter_abandon_container(&iter, &sub)
            throw error
        }
        guard dbus_message_iter_close_container(&iter, &sub) != 0 else { throw noMemory() }
    }

    static func append(_ value: DBusValue, to iter: inout DBusMessageIter) throws(DBusConnectionError) {
        switch value {
        case .byte(let v): try appendBasic(&iter, TypeCode.byte, v)
        case .bool(let v): try appendBasic(&iter, TypeCode.bool, dbus_bool_t(v ? 1 : 0))
        case .int16(let v): try appendBasic(&iter, TypeCode.int16, v)
        case .uint16(let v): try appendBasic(&iter, TypeCode.uint16, v)
        case .int32(let v): try appendBasic(&iter, TypeCode.int32, v)
        case .uint32(let v): try appendBasic(&iter, TypeCode.uint32, v)
        case .int64(let v): try appendBasic(&iter, TypeCode.int64, v)
        case .uint64(let v): try appendBasic(&iter, TypeCode.uint64, v)
        case .double(let v): try appendBasic(&iter, TypeCode.double, v)
        case .unixFD(let fd):
            // libdbus duplicates the descriptor into the message; the caller keeps its own.
            // Appended under the descriptor's lock, so a concurrent close cannot hand libdbus a
            // number that has been reused meanwhile.
            let appended = fd.withDescriptor { raw -> Bool in
                var number = raw
                return dbus_message_iter_append_basic(&iter, Int32(TypeCode.unixFD), &number) != 0
            }
            switch appended {
            case true?: break
            case false?: throw DBusConnectionError(.invalidArgument, "cannot append file descriptor \(fd)")
            case nil: throw DBusConnectionError(.invalidArgument, "file descriptor closed or taken before it was sent")
            }
        case .string(let s): try appendString(&iter, TypeCode.string, s)
        case .objectPath(let p): try appendString(&iter, TypeCode.objectPath, p.rawValue)
        case .signature(let s): try appendString(&iter, TypeCode.signature, s.rawValue)
        case .array(let element, let items):
            try container(&iter, TypeCode.array, element.signature) { (sub) throws(DBusConnectionError) in
                if try appendFixedArray(element, items, to: &sub) { return }
                for item in items { try append(item, to: &sub) }
            }
        case .dictionary(let k, let v, let entries):
            try container(&iter, TypeCode.array, "{\(k.signature)\(v.signature)}") { (sub) throws(DBusConnectionError) in
                for e in entries {
                    try container(&sub, TypeCode.dictEntry, nil) { (entry) throws(DBusConnectionError) in
                        try append(e.key, to: &entry)
                        try append(e.value, to: &entry)
                    }
                }
            }
        case .structure(let fields):
            try container(&iter, TypeCode.structure, nil) { (sub) throws(DBusConnectionError) in
                for f in fields { try append(f, to: &sub) }
            }
        case .variant(let inner):
            try container(&iter, TypeCode.variant, inner.type.signature) { (sub) throws(DBusConnectionError) in
                try append(inner, to: &sub)
            }
        }
    }

    /// Arrays of fixed-size numbers in one copy (dbus_message_iter_append_fixed_array).
    private static func appendFixedArray(_ element: DBusType, _ items: [DBusValue],
                                         to sub: inout DBusMessageIter) throws(DBusConnectionError) -> Bool {
        func put<T: BitwiseCopyable>(_ code: UInt8, _ extract: (DBusValue) -> T?) throws(DBusConnectionError) -> Bool {
            var values: [T] = []
            values.reserveCapacity(items.count)
            for item in items {
                guard let v = extract(item) else { return false }
                values.append(v)
            }
            let ok = values.withUnsafeBufferPointer { buffer -> Bool in
                var base = buffer.baseAddress
                return dbus_message_iter_append_fixed_array(&sub, Int32(code), &base, Int32(buffer.count)) != 0
            }
            guard ok else { throw noMemory() }
            return true
        }
        guard items.count > 16 else { return false }
        switch element {
        case .byte: return try put(TypeCode.byte) { if case .byte(let v) = $0 { v } else { nil } }
        case .int16: return try put(TypeCode.int16) { if case .int16(let v) = $0 { v } else { nil } }
        case .uint16: return try put(TypeCode.uint16) { if case .uint16(let v) = $0 { v } else { nil } }
        case .int32: return try put(TypeCode.int32) { if case .int32(let v) = $0 { v } else { nil } }
        case .uint32: return try put(TypeCode.uint32) { if case .uint32(let v) = $0 { v } else { nil } }
        case .int64: return try put(TypeCode.int64) { if case .int64(let v) = $0 { v } else { nil } }
        case .uint64: return try put(TypeCode.uint64) { if case .uint64(let v) = $0 { v } else { nil } }
        case .double: return try put(TypeCode.double) { if case .double(let v) = $0 { v } else { nil } }
        default: return false
        }
    }

    /// Reads an array of fixed-size numbers in one go (dbus_message_iter_get_fixed_array).
    private static func readFixedArray(_ element: DBusType, _ sub: inout DBusMessageIter) -> [DBusValue]? {
        func get<T: BitwiseCopyable>(_: T.Type, _ make: (T) -> DBusValue) -> [DBusValue] {
            var pointer: UnsafeRawPointer? = nil
            var count: Int32 = 0
            dbus_message_iter_get_fixed_array(&sub, &pointer, &count)
            guard let pointer, count > 0 else { return [] }
            let typed = pointer.bindMemory(to: T.self, capacity: Int(count))
            return UnsafeBufferPointer(start: typed, count: Int(count)).map(make)
        }
        switch element {
        case .byte: return get(UInt8.self) { .byte($0) }
        case .int16: return get(Int16.self) { .int16($0) }
        case .uint16: return get(UInt16.self) { .uint16($0) }
        case .int32: return get(Int32.self) { .int32($0) }
        case .uint32: return get(UInt32.self) { .uint32($0) }
        case .int64: return get(Int64.self) { .int64($0) }
        case .uint64: return get(UInt64.self) { .uint64($0) }
        case .double: return get(Double.self) { .double($0) }
        default: return nil
        }
    }

    // MARK: Reading

    /// Reads every argument of `message`. libdbus validated the body when it read the message
    /// from the socket, so the iterator walks well-formed data; anything still unexpected is
    /// reported as `invalidMessage`, never trusted.
    static func read(_ message: OpaquePointer) throws(DBusConnectionError) -> [DBusValue] {
        if let values = try readFromWire(message) { return values }
        return try readIterating(message)
    }

    /// `read` through libdbus' iterators: for bodies with unix fds.
    static func readIterating(_ message: OpaquePointer) throws(DBusConnectionError) -> [DBusValue] {
        var iter = DBusMessageIter()
        guard dbus_message_iter_init(message, &iter) != 0 else { return [] }
        return try readAll(&iter)
    }

    private static func readAll(_ iter: inout DBusMessageIter) throws(DBusConnectionError) -> [DBusValue] {
        var values: [DBusValue] = []
        while dbus_message_iter_get_arg_type(&iter) != 0 {
            values.append(try readOne(&iter))
            dbus_message_iter_next(&iter)
        }
        return values
    }

    private static func basic<T: BitwiseCopyable>(_ iter: inout DBusMessageIter, _ initial: T) -> T {
        var v = initial
        dbus_message_iter_get_basic(&iter, &v)
        return v
    }

    private static func string(_ iter: inout DBusMessageIter) -> String {
        var p: UnsafePointer<CChar>? = nil
        dbus_message_iter_get_basic(&iter, &p)
        guard let p else { return "" }
        return String(cString: p)
    }

    private static func invalid(_ why: String) -> DBusConnectionError {
        DBusConnectionError(.invalidMessage, why)
    }

    /// The type signature at the iterator, parsed.
    private static func currentType(_ iter: inout DBusMessageIter) throws(DBusConnectionError) -> DBusType {
        guard let raw = dbus_message_iter_get_signature(&iter) else { throw invalid("no signature at iterator") }
        defer { dbus_free(raw) }
        let text = String(cString: raw)
        var parser = SignatureParser(Array(text.utf8))
        let types: [DBusType]
        do { types = try parser.parseAll() } catch { throw invalid("received signature '\(text)' does not parse") }
        guard types.count == 1 else { throw invalid("received signature '\(text)' is not one type") }
        return types[0]
    }

    private static func readOne(_ iter: inout DBusMessageIter) throws(DBusConnectionError) -> DBusValue {
        let code = UInt8(truncatingIfNeeded: dbus_message_iter_get_arg_type(&iter))
        switch code {
        case TypeCode.byte: return .byte(basic(&iter, UInt8(0)))
        case TypeCode.bool: return .bool(basic(&iter, dbus_bool_t(0)) != 0)
        case TypeCode.int16: return .int16(basic(&iter, Int16(0)))
        case TypeCode.uint16: return .uint16(basic(&iter, UInt16(0)))
        case TypeCode.int32: return .int32(basic(&iter, Int32(0)))
        case TypeCode.uint32: return .uint32(basic(&iter, UInt32(0)))
        case TypeCode.int64: return .int64(basic(&iter, Int64(0)))
        case TypeCode.uint64: return .uint64(basic(&iter, UInt64(0)))
        case TypeCode.double: return .double(basic(&iter, Double(0)))
        case TypeCode.unixFD:
            // libdbus hands out a fresh duplicate (close-on-exec; -1 when it cannot), which the
            // value owns from here: each read of a message is a new descriptor.
            let fd = basic(&iter, Int32(-1))
            guard fd >= 0 else { throw invalid("could not duplicate a received file descriptor") }
            return .unixFD(UnixFD(taking: fd))
        case TypeCode.string: return .string(string(&iter))
        case TypeCode.objectPath:
            let s = string(&iter)
            guard NameRules.isValidObjectPath(s) else { throw invalid("invalid object path '\(s)'") }
            return .objectPath(ObjectPath(trusted: s))
        case TypeCode.signature:
            let s = string(&iter)
            do { return .signature(try Signature(s)) } catch { throw invalid("invalid signature '\(s)'") }
        case TypeCode.array:
            let type = try currentType(&iter)
            var sub = DBusMessageIter()
            dbus_message_iter_recurse(&iter, &sub)
            switch type {
            case .array(let element):
                if let fixed = readFixedArray(element, &sub) { return .array(element, fixed) }
                return .array(element, try readAll(&sub))
            case .dictionary(let k, let v):
                var entries: [DBusDictEntry] = []
                while dbus_message_iter_get_arg_type(&sub) == Int32(TypeCode.dictEntry) {
                    var entry = DBusMessageIter()
                    dbus_message_iter_recurse(&sub, &entry)
                    let key = try readOne(&entry)
                    guard dbus_message_iter_next(&entry) != 0 else { throw invalid("dict entry without value") }
                    let value = try readOne(&entry)
                    entries.append(DBusDictEntry(key, value))
                    dbus_message_iter_next(&sub)
                }
                return .dictionary(key: k, value: v, entries)
            default:
                throw invalid("array with signature '\(type)'")
            }
        case TypeCode.structure:
            var sub = DBusMessageIter()
            dbus_message_iter_recurse(&iter, &sub)
            let fields = try readAll(&sub)
            guard !fields.isEmpty else { throw invalid("empty structure") }
            return .structure(fields)
        case TypeCode.variant:
            var sub = DBusMessageIter()
            dbus_message_iter_recurse(&iter, &sub)
            guard dbus_message_iter_get_arg_type(&sub) != 0 else { throw invalid("empty variant") }
            return .variant(try readOne(&sub))
        default:
            throw invalid("unknown type code \(code)")
        }
    }

    /// Closes the descriptors in `values` now rather than when the last copy goes (for values
    /// kept for another purpose, such as matching a signal against rules).
    static func closeDescriptors(in values: [DBusValue]) {
        for v in values { closeDescriptors(in: v) }
    }

    static func closeDescriptors(in value: DBusValue) {
        switch value {
        case .unixFD(let fd): fd.close()
        case .array(_, let items): closeDescriptors(in: items)
        case .dictionary(_, _, let entries):
            for e in entries {
                closeDescriptors(in: e.key)
                closeDescriptors(in: e.value)
            }
        case .structure(let fields): closeDescriptors(in: fields)
        case .variant(let inner): closeDescriptors(in: inner)
        default: break
        }
    }

    static func containsDescriptors(_ values: [DBusValue]) -> Bool {
        values.contains(where: containsDescriptors)
    }

    static func containsDescriptors(_ value: DBusValue) -> Bool {
        switch value {
        case .unixFD: true
        case .array(let t, let items): typeContainsDescriptors(t) && containsDescriptors(items)
        case .dictionary(_, let v, let entries): typeContainsDescriptors(v) && entries.contains { containsDescriptors($0.value) }
        case .structure(let fields): containsDescriptors(fields)
        case .variant(let inner): containsDescriptors(inner)
        default: false
        }
    }

    private static func typeContainsDescriptors(_ t: DBusType) -> Bool {
        switch t {
        case .unixFD, .variant: true
        case .array(let e): typeContainsDescriptors(e)
        case .dictionary(let k, let v): typeContainsDescriptors(k) || typeContainsDescriptors(v)
        case .structure(let f): f.contains(where: typeContainsDescriptors)
        default: false
        }
    }
}
