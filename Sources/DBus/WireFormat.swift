import CDBus

/// Whole messages in D-Bus wire format, decoded and encoded with the same code the connection
/// uses on received and sent messages (`Marshal`). For the libFuzzer target
/// `Tests/Fuzz/dbus-message` and the tool that writes its seed corpus; not an API for
/// applications, hence the SPI (`@_spi(WireFormat) import DBus`).
@_spi(WireFormat)
public enum WireFormat {
    /// Decodes `bytes` as one message: libdbus checks the header and body
    /// (`dbus_message_demarshal`, as it does for what it reads from a socket), then `Marshal`
    /// reads every argument. nil: libdbus refused the bytes. Received descriptors are owned by
    /// the values (closed with them).
    public static func decodeBody(_ bytes: UnsafeRawBufferPointer) -> Result<[DBusValue], DBusConnectionError>? {
        guard let message = demarshal(bytes) else { return nil }
        defer { dbus_message_unref(message) }
        do {
            return .success(try Marshal.read(message))
        } catch {
            return .failure(error)
        }
    }

    /// The body signature libdbus read from the header of `bytes`, nil when it refuses them.
    public static func bodySignature(_ bytes: UnsafeRawBufferPointer) -> String? {
        guard let message = demarshal(bytes) else { return nil }
        defer { dbus_message_unref(message) }
        return dbus_message_get_signature(message).map { String(cString: $0) }
    }

    /// A signal message carrying `values` in wire format (little-endian, serial 1), built by the
    /// same `Marshal.append` the connection uses to send.
    public static func encodeSignal(path: String, interface: String, member: String,
                                    _ values: [DBusValue]) throws(DBusConnectionError) -> [UInt8] {
        try ValueValidation.validateBody(values)
        guard let message = dbus_message_new_signal(path, interface, member) else {
            throw DBusConnectionError(.noMemory, "cannot create a signal message")
        }
        defer { dbus_message_unref(message) }
        try Marshal.append(values, to: message)
        dbus_message_set_serial(message, 1)
        var buffer: UnsafeMutablePointer<CChar>? = nil
        var length: Int32 = 0
        guard dbus_message_marshal(message, &buffer, &length) != 0, let buffer else {
            throw DBusConnectionError(.noMemory, "cannot marshal a message")
        }
        defer { dbus_free(buffer) }
        return UnsafeRawBufferPointer(start: buffer, count: Int(length)).map { $0 }
    }

    /// A message read from `bytes` by libdbus (which validates it as one received), owned by the
    /// caller; nil when libdbus refuses them.
    static func demarshal(_ bytes: UnsafeRawBufferPointer) -> OpaquePointer? {
        guard let base = bytes.baseAddress, bytes.count > 0, bytes.count <= Int(Int32.max) else { return nil }
        var error = CDBus.DBusError()
        dbus_error_init(&error)
        let message = dbus_message_demarshal(base.assumingMemoryBound(to: CChar.self), Int32(bytes.count), &error)
        dbus_error_free(&error)
        return message
    }
}
