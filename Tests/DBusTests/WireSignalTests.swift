import CDBus
@_spi(WireFormat) @testable import DBus
import Testing

/// Signals are written whole in wire format and read back by libdbus (`OutgoingSignal.wireMessage`):
/// the bytes must be those libdbus' iterators write, and the message the one they build.
@Suite(.timeLimit(.minutes(2)))
struct WireSignalTests {
    static func signal(_ values: [DBusValue], destination: String? = nil) throws -> OutgoingSignal {
        OutgoingSignal(path: try ObjectPath("/a"), interface: "org.example.A", member: "B", arguments: values, destination: destination)
    }

    @Test func theBytesAreThoseLibdbusWrites() throws {
        func check(_ values: [DBusValue], _ comment: Comment) throws {
            let ours = try Self.signal(values).wireBytes(serial: 1)
            #expect(ours == (try WireFormat.encodeSignal(path: "/a", interface: "org.example.A", member: "B", values)), comment)
        }
        try check([], "no arguments: no signature field")
        for v in Samples.everyType { try check([v], "\(v)") }
        try check(Samples.everyType, "every sample type in one body")
        var fuzzer = Fuzzer(seed: 21)
        for round in 0..<2000 {
            try check((0..<(1 + round % 4)).map { _ in fuzzer.randomValue(fuzzer.randomType(depth: 0)) }, "round \(round)")
        }
    }

    @Test func theMessageCarriesEveryFieldAndNumbersAsAnyOther() throws {
        let values: [DBusValue] = [.string("cycle"), .string("running"), .uint32(42), .string("READY=1")]
        let message = try #require(try Self.signal(values, destination: ":1.7").wireMessage())
        defer { dbus_message_unref(message) }
        #expect(dbus_message_get_type(message) == DBUS_MESSAGE_TYPE_SIGNAL)
        #expect(dbus_message_get_serial(message) == 0, "the connection numbers it when it sends it")
        #expect(dbus_message_get_no_reply(message) != 0)
        #expect(String(cString: dbus_message_get_path(message)) == "/a")
        #expect(String(cString: dbus_message_get_interface(message)) == "org.example.A")
        #expect(String(cString: dbus_message_get_member(message)) == "B")
        #expect(String(cString: dbus_message_get_destination(message)) == ":1.7")
        #expect(String(cString: dbus_message_get_signature(message)) == "ssus")
        #expect(try Marshal.read(message) == values)
    }

    @Test func smallBodiesDescriptorsAndBytesLibdbusRefusesAreLeftToTheIterators() throws {
        #expect(try Self.signal([]).wireMessage() == nil, "the iterators are cheaper for no value")
        #expect(try Self.signal([.uint32(1)]).wireMessage() == nil, "and for one basic value")
        let one = try #require(try Self.signal([.array(.uint32, [.uint32(1)])]).wireMessage(), "one container is written")
        dbus_message_unref(one)
        #expect(try Self.signal([.unixFD(try UnixFD(duplicating: 0))]).wireMessage() == nil)
        // A NUL inside a string: libdbus refuses the bytes, and the iterators then report why.
        #expect(try Self.signal([.string("a\u{0}b")]).wireMessage() == nil)
    }
}
