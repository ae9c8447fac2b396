// Signals written whole in wire format, then read back by libdbus. libdbus' iterators rewrite
// the header's signature field at every appended value, so their cost grows faster than the
// body: 1.3 us for one uint32, 8.5 us for four, 9.3 us for a PropertiesChanged of five
// properties. Reading bytes back (`dbus_message_demarshal`, then a copy) costs 2.2 us plus
// ~0.3 us a value, so it pays from two values on (docs/dbus-layer.md, "Sending signals").
import CDBus

extension OutgoingSignal {
    /// The signal as a message the caller owns, with serial 0 (the connection numbers it); nil
    /// when the iterators are cheaper (a body of at most one basic value), when it carries
    /// descriptors (which bytes alone cannot), or when libdbus refuses the bytes (the caller then
    /// builds it with `Marshal`, which says why). libdbus validates the bytes as it validates
    /// every message it receives.
    func wireMessage() -> OpaquePointer? {
        guard arguments.count > 1 || arguments.first?.type.isBasic == false else { return nil }
        guard let bytes = wireBytes(serial: 1) else { return nil }
        // dbus_message_demarshal refuses serial 0 and dbus_message_copy resets it to 0.
        guard let loaded = bytes.withUnsafeBytes(WireFormat.demarshal) else { return nil }
        defer { dbus_message_unref(loaded) }
        return dbus_message_copy(loaded)
    }

    /// The whole message in wire format (little-endian), as libdbus writes a signal with
    /// `serial`: flag NO_REPLY_EXPECTED, then the fields path, interface, member, destination
    /// and signature. nil for descriptors.
    func wireBytes(serial: UInt32) -> [UInt8]? {
        var body = WireWriter(capacity: 128)
        for value in arguments where !body.write(value) { return nil }
        let signature = arguments.signature
        guard signature.rawValue.utf8.count <= 255, body.bytes.count < Int(Int32.max) - 1024 else { return nil }

        var message = WireWriter(capacity: 128 + body.bytes.count)
        message.bytes += [UInt8(ascii: "l"), UInt8(DBUS_MESSAGE_TYPE_SIGNAL), UInt8(DBUS_HEADER_FLAG_NO_REPLY_EXPECTED), 1]
        message.fixed(UInt32(body.bytes.count))
        message.fixed(serial)
        let fields = message.beginArray(elementAlignment: 8)
        func field(_ code: Int32, _ value: DBusValue) {
            message.pad(to: 8)
            message.bytes.append(UInt8(code))
            _ = message.write(.variant(value))
        }
        field(DBUS_HEADER_FIELD_PATH, .objectPath(path))
        field(DBUS_HEADER_FIELD_INTERFACE, .string(interface))
        field(DBUS_HEADER_FIELD_MEMBER, .string(member))
        if let destination { field(DBUS_HEADER_FIELD_DESTINATION, .string(destination)) }
        if !arguments.isEmpty { field(DBUS_HEADER_FIELD_SIGNATURE, .signature(signature)) }
        message.endArray(fields)
        message.pad(to: 8)
        message.bytes += body.bytes
        return message.bytes
    }
}
