import CDBus
@_spi(WireFormat) @testable import DBus
import Foundation
import Testing
import TestSupport

/// GetManagedObjects is written straight into wire format, with each object's entry kept until
/// one of its values changes: the bytes must be libdbus' own, and the entry never stale.
@Suite(.timeLimit(.minutes(2)))
struct ManagedObjectsTests {
    /// The body libdbus writes for `values` (through `Marshal.append`, as every message is sent).
    static func libdbusBody(_ values: [DBusValue]) throws -> [UInt8] {
        let message = try WireFormat.encodeSignal(path: "/a", interface: "org.example.A", member: "B", values)
        let length = message[4...7].reversed().reduce(0) { $0 << 8 | Int($1) }
        return Array(message.suffix(length))
    }

    static func writerBody(_ values: [DBusValue]) -> [UInt8]? {
        var writer = WireWriter()
        for v in values where !writer.write(v) { return nil }
        return writer.bytes
    }

    @Test func theWriterWritesTheBytesLibdbusWrites() throws {
        #expect(try Self.libdbusBody([.uint32(1)]) == [1, 0, 0, 0], "libdbus writes little-endian here, as the writer does")
        // Each value alone, then all in one body (each then starts where the previous ended).
        let samples = Samples.everyType
        for v in samples {
            #expect(Self.writerBody([v]) == (try Self.libdbusBody([v])), "\(v)")
        }
        #expect(Self.writerBody(samples) == (try Self.libdbusBody(samples)))
        var fuzzer = Fuzzer(seed: 15)
        for round in 0..<2000 {
            let values = (0..<(1 + round % 3)).map { _ in fuzzer.randomValue(fuzzer.randomType(depth: 0)) }
            #expect(Self.writerBody(values) == (try Self.libdbusBody(values)), "round \(round): \(values)")
        }
        #expect(Self.writerBody([.unixFD(try UnixFD(duplicating: 0))]) == nil, "a descriptor has no meaning as bytes alone")
    }

    /// Received bodies are read from their bytes (`WireReader`), not through libdbus' iterators:
    /// both must give the values sent.
    @Test func theReaderReadsWhatTheIteratorsRead() throws {
        func check(_ values: [DBusValue], _ comment: Comment) throws {
            let bytes = try WireFormat.encodeSignal(path: "/a", interface: "org.example.A", member: "B", values)
            let message = try #require(bytes.withUnsafeBufferPointer { buffer in
                buffer.withMemoryRebound(to: CChar.self) { dbus_message_demarshal($0.baseAddress, Int32($0.count), nil) }
            })
            defer { dbus_message_unref(message) }
            let fromWire = try Marshal.readFromWire(message)
            #expect(fromWire == values, comment)
            #expect(try Marshal.readIterating(message) == values, comment)
        }
        try check(Samples.everyType, "every sample type")
        var fuzzer = Fuzzer(seed: 16)
        for round in 0..<2000 {
            try check((0..<(1 + round % 3)).map { _ in fuzzer.randomValue(fuzzer.randomType(depth: 0)) }, "round \(round)")
        }
    }

    /// An interface with a property of every sample type.
    static func object(_ path: ObjectPath) throws -> ExportedObject {
        let properties = Samples.everyType.enumerated().map { i, v in
            DBusProperty("P\(i)", v.type, access: .readwrite, initial: v)
        }
        return try ExportedObject(path: path, interfaces: [
            DBusInterface("org.example.Every", properties: properties),
            DBusInterface("org.example.Empty"),
            DBusInterface("org.example.Count", properties: [DBusProperty("N", .uint32, access: .readwrite, initial: .uint32(0))]),
        ])
    }

    /// What the reply held when it was built from values (and still is for objects with
    /// descriptors): every object below `root`, in path order.
    static func expected(_ objects: [ExportedObject]) -> DBusValue {
        .dictionary(key: .objectPath, value: ManagedObjects.interfacesType, objects.sorted { $0.path < $1.path }.map {
            DBusDictEntry(.objectPath($0.path), $0.interfacesAndProperties())
        })
    }

    /// A server with an object manager at /org/example and a client; `managed` calls
    /// GetManagedObjects on it.
    static func withManager(_ body: (_ fx: BusFixture, _ server: DBusConnection, _ client: DBusConnection,
                                     _ managed: () async throws -> DBusValue?) async throws -> Void) async throws {
        try await withBus { fx in
            let server = try await fx.connect()
            let client = try await fx.connect()
            let root = try ExportedObject(path: try ObjectPath("/org/example"), interfaces: [], objectManager: true)
            try server.export(root)
            try await body(fx, server, client) {
                try await client.call(destination: server.uniqueName, path: root.path,
                                      interface: "org.freedesktop.DBus.ObjectManager", member: "GetManagedObjects").first
            }
            server.close()
            client.close()
        }
    }

    @Test func theReplyHoldsEveryObjectWithItsCurrentValuesAfterEachChange() async throws {
        try await Self.withManager { fx, server, client, managed in
            // Exported out of order; a sibling tree outside the manager's path is left out.
            let objects = try (0..<300).reversed().map { try Self.object(try ObjectPath("/org/example/o\($0)")) }
            for o in objects { try server.export(o) }
            try server.export(try Self.object(try ObjectPath("/org/other")))
            #expect(try await managed() == Self.expected(objects))
            #expect(try await managed() == Self.expected(objects), "the kept reply, sent again")
            // The kept reply readdressed to another caller (else it would never arrive).
            let other = try await fx.connect()
            #expect(try await other.call(destination: server.uniqueName, path: try ObjectPath("/org/example"),
                                         interface: "org.freedesktop.DBus.ObjectManager", member: "GetManagedObjects").first
                == Self.expected(objects))
            other.close()
            #expect(try await managed() == Self.expected(objects))

            // A change by the owner shows in the very next reply.
            try objects[7].setProperty("org.example.Count", "N", .uint32(42))
            try objects[7].setProperties("org.example.Every", [("P0", .byte(1)), ("P12", .string("changed"))])
            let afterSet = try await managed()
            #expect(afterSet == Self.expected(objects))
            #expect(afterSet?.dictionaryEntries?.first { $0.key == .objectPath(objects[7].path) }?.value
                .stringKeyedDictionary?["org.example.Count"]?.stringKeyedDictionary?["N"] == .variant(.uint32(42)))

            // So does a Set from the bus.
            _ = try await client.call(destination: server.uniqueName, path: objects[299].path, interface: "org.freedesktop.DBus.Properties",
                                      member: "Set", arguments: [.string("org.example.Count"), .string("N"), .variant(.uint32(7))])
            #expect(objects[299].property("org.example.Count", "N") == .uint32(7))
            #expect(try await managed() == Self.expected(objects))

            // Unexported objects leave the reply, new ones join it.
            server.unexport(objects[0].path)
            let added = try Self.object(try ObjectPath("/org/example/new"))
            try server.export(added)
            #expect(try await managed() == Self.expected(Array(objects.dropFirst()) + [added]))
        }
    }

    @Test func objectsWithDescriptorsAreStillListedAndOnlyOwnInterfaces() async throws {
        try await Self.withManager { _, server, _, managed in
            let plain = try Self.object(try ObjectPath("/org/example/a"))
            let withFD = try ExportedObject(path: try ObjectPath("/org/example/b"), interfaces: [
                DBusInterface("org.example.FD", properties: [DBusProperty("F", .unixFD, initial: .unixFD(try UnixFD(duplicating: 0)))]),
            ])
            try server.export(plain)
            try server.export(withFD)
            let reply = try await managed()
            let entries = reply?.dictionaryEntries ?? []
            #expect(entries.map(\.key) == [.objectPath(plain.path), .objectPath(withFD.path)])
            #expect(entries.first?.value == plain.interfacesAndProperties())
            // Only each object's own interfaces, in the written bytes and the value path alike:
            // the standard ones, which every object answers, are left out (as GDBus does).
            let interfaces = entries.map { Set(($0.value.stringKeyedDictionary ?? [:]).keys) }
            #expect(interfaces == [Set(plain.interfaces.map(\.name)), ["org.example.FD"]])
            let fd = entries.last?.value.stringKeyedDictionary?["org.example.FD"]?.stringKeyedDictionary?["F"]
            if case .variant(.unixFD(let received))? = fd { #expect(received.isOpen) } else { Issue.record("no descriptor: \(String(describing: fd))") }
            if let reply { Marshal.closeDescriptors(in: reply) }
        }
    }
}
