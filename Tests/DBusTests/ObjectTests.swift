import DBus
import Foundation
import Synchronization
import Testing
import TestSupport

/// An object with methods and properties of many signatures, used by several suites.
enum TestObject {
    static let interface = "org.example.Test"
    static let path = try! ObjectPath("/org/example/Test")

    static func make(path: ObjectPath = path, objectManager: Bool = false) throws -> ExportedObject {
        try ExportedObject(path: path, interfaces: [
            DBusInterface(interface, methods: [
                DBusMethod("Echo", in: [DBusArgument("value", .variant)], out: [DBusArgument("value", .variant)]) { call in
                    call.arguments
                },
                DBusMethod("EchoAll", in: [], out: []) { _ in [] },
                DBusMethod("Add", in: [DBusArgument("a", .int32), DBusArgument("b", .int32)], out: [DBusArgument("sum", .int32)]) { call in
                    guard let a = call.arguments[0].int32Value, let b = call.arguments[1].int32Value else { throw DBusError.invalidArgs("ints") }
                    return [.int32(a &+ b)]
                },
                DBusMethod("Concat", in: [DBusArgument("parts", .array(.string)), DBusArgument("sep", .string)], out: [DBusArgument("joined", .string)]) { call in
                    [.string((call.arguments[0].stringArrayValue ?? []).joined(separator: call.arguments[1].stringValue ?? ""))]
                },
                DBusMethod("Describe", in: [DBusArgument("options", .dictionary(key: .string, value: .variant))],
                           out: [DBusArgument("keys", .array(.string)), DBusArgument("count", .uint32)]) { call in
                    let keys = (call.arguments[0].stringKeyedDictionary ?? [:]).keys.sorted()
                    return [.stringArray(keys), .uint32(UInt32(keys.count))]
                },
                DBusMethod("Fail", in: [DBusArgument("name", .string), DBusArgument("message", .string)]) { call in
                    throw DBusError(call.arguments[0].stringValue ?? "", call.arguments[1].stringValue ?? "")
                },
                DBusMethod("WrongReply", out: [DBusArgument("x", .string)]) { _ in [.int32(1)] },
                DBusMethod("WhoAmI", out: [DBusArgument("uid", .uint32), DBusArgument("pid", .uint32), DBusArgument("groups", .array(.uint32))]) { call in
                    let c = try await call.connection.credentials(of: call.sender)
                    return [.uint32(c.uid), .uint32(c.pid ?? 0), .array(.uint32, (c.groups ?? []).map { .uint32($0) })]
                },
                DBusMethod("ReadFD", in: [DBusArgument("fd", .unixFD)], out: [DBusArgument("text", .string)]) { call in
                    guard let fd = call.arguments[0].unixFDValue else { throw DBusError.invalidArgs("fd") }
                    var buffer = [UInt8](repeating: 0, count: 256)
                    let n = fd.withDescriptor { read($0, &buffer, buffer.count) } ?? -1
                    return [.string(String(decoding: buffer[0..<max(n, 0)], as: UTF8.self))]
                },
                DBusMethod("Ping", in: [DBusArgument("tag", .string)]) { call in
                    try call.object.emitSignal(interface: interface, member: "Pong", arguments: [call.arguments[0]])
                    return []
                },
            ], properties: [
                DBusProperty("Name", .string, initial: .string("test")),
                DBusProperty("Count", .uint32, access: .readwrite, initial: .uint32(0)),
                DBusProperty("Level", .string, access: .readwrite, initial: .string("info"), set: { value, _ in
                    guard let s = value.stringValue, ["debug", "info", "error"].contains(s) else {
                        throw DBusError.invalidArgs("unknown level '\(value)'")
                    }
                    return value
                }),
                DBusProperty("Options", .dictionary(key: .string, value: .variant), access: .readwrite, initial: .variantDictionary([:])),
                DBusProperty("Secret", .string, access: .readwrite, initial: .string("s"), changeSignal: .invalidates),
                DBusProperty("Fixed", .array(.structure([.int32, .string])), initial: .array(.structure([.int32, .string]), [.structure([.int32(1), .string("one")])]), changeSignal: .const),
            ], signals: [
                DBusSignalDeclaration("Pong", [DBusArgument("tag", .string)]),
                DBusSignalDeclaration("Everything", [DBusArgument("values", .array(.variant))]),
            ]),
        ], objectManager: objectManager)
    }
}

@Suite struct ObjectTests {
    @Test func everyTypeRoundTripsAsArgumentAndReply() async throws {
        try await withBus { fx in
            let server = try await fx.connect()
            let client = try await fx.connect()
            try server.export(try TestObject.make())
            for value in Samples.everyType {
                let reply = try await client.call(destination: server.uniqueName, path: TestObject.path, interface: TestObject.interface,
                                                  member: "Echo", arguments: [.variant(value)])
                #expect(reply == [.variant(value)], "\(value)")
            }
            let sum = try await client.call(destination: server.uniqueName, path: TestObject.path, interface: TestObject.interface,
                                            member: "Add", arguments: [.int32(40), .int32(2)])
            #expect(sum == [.int32(42)])
            let described = try await client.call(destination: server.uniqueName, path: TestObject.path, interface: nil,
                                                  member: "Describe", arguments: [.variantDictionary(["z": .int32(1), "a": .string("x")])])
            #expect(described == [.stringArray(["a", "z"]), .uint32(2)])
            server.close()
            client.close()
        }
    }

    /// Bigger than the socket buffers: libdbus writes in pieces (the write watch is enabled and
    /// toggled) and reads in pieces; several such calls in flight at once.
    @Test func largeMessagesCrossInPieces() async throws {
        try await withBus { fx in
            let server = try await fx.connect()
            let client = try await fx.connect()
            try server.export(try TestObject.make())
            let big = DBusValue.array(.byte, (0..<(1 << 19)).map { .byte(UInt8(truncatingIfNeeded: $0 &* 7)) })
            let strings = DBusValue.array(.string, (0..<20_000).map { .string("item \($0)") })
            let replies = try await withThrowingTaskGroup(of: [DBusValue].self) { group in
                for value in [big, strings, big] {
                    group.addTask {
                        try await client.call(destination: server.uniqueName, path: TestObject.path, interface: TestObject.interface,
                                              member: "Echo", arguments: [.variant(value)], timeout: .seconds(60))
                    }
                }
                var all: [[DBusValue]] = []
                for try await r in group { all.append(r) }
                return all
            }
            #expect(replies.filter { $0 == [.variant(big)] }.count == 2)
            #expect(replies.filter { $0 == [.variant(strings)] }.count == 1)
            server.close()
            client.close()
        }
    }

    @Test func unixFileDescriptorsPass() async throws {
        try await withBus { fx in
            let server = try await fx.connect()
            let client = try await fx.connect()
            try server.export(try TestObject.make())
            var fds: [Int32] = [0, 0]
            #expect(pipe(&fds) == 0)
            _ = "through a pipe".withCString { write(fds[1], $0, strlen($0)) }
            close(fds[1])
            let reply = try await client.call(destination: server.uniqueName, path: TestObject.path, interface: TestObject.interface,
                                              member: "ReadFD", arguments: [.unixFD(UnixFD(taking: fds[0]))])
            #expect(reply == [.string("through a pipe")])
            server.close()
            client.close()
        }
    }

    @Test func errorsAreTypedAndStandard() async throws {
        try await withBus { fx in
            let server = try await fx.connect()
            let client = try await fx.connect()
            try server.export(try TestObject.make())
            let dest = server.uniqueName
            let p = TestObject.path
            let e = await expectDBusError("org.example.Test.Error.Custom") {
                _ = try await client.call(destination: dest, path: p, interface: TestObject.interface, member: "Fail",
                                          arguments: [.string("org.example.Test.Error.Custom"), .string("it failed")])
            }
            #expect(e?.message == "it failed")
            await expectDBusError(DBusError.Name.failed) {
                _ = try await client.call(destination: dest, path: p, interface: TestObject.interface, member: "Fail",
                                          arguments: [.string("not an error name"), .string("x")])
            }
            await expectDBusError(DBusError.Name.failed) {
                _ = try await client.call(destination: dest, path: p, interface: TestObject.interface, member: "WrongReply")
            }
            await expectDBusError(DBusError.Name.invalidArgs) {
                _ = try await client.call(destination: dest, path: p, interface: TestObject.interface, member: "Add", arguments: [.string("1"), .int32(2)])
            }
            await expectDBusError(DBusError.Name.invalidArgs) {
                _ = try await client.call(destination: dest, path: p, interface: TestObject.interface, member: "Add")
            }
            await expectDBusError(DBusError.Name.unknownMethod) {
                _ = try await client.call(destination: dest, path: p, interface: TestObject.interface, member: "Nope")
            }
            await expectDBusError(DBusError.Name.unknownMethod) {
                _ = try await client.call(destination: dest, path: p, interface: nil, member: "Nope")
            }
            await expectDBusError(DBusError.Name.unknownInterface) {
                _ = try await client.call(destination: dest, path: p, interface: "org.example.Other", member: "Echo")
            }
            await expectDBusError(DBusError.Name.unknownObject) {
                _ = try await client.call(destination: dest, path: try ObjectPath("/no/such"), interface: TestObject.interface, member: "Echo")
            }
            // Peer works everywhere.
            _ = try await client.call(destination: dest, path: try ObjectPath("/no/such"), interface: "org.freedesktop.DBus.Peer", member: "Ping")
            let id = try await client.call(destination: dest, path: p, interface: "org.freedesktop.DBus.Peer", member: "GetMachineId")
            #expect(id.first?.stringValue?.count == 32)
            server.close()
            client.close()
        }
    }

    /// `DBusMethod(authorize:)` runs before the signature check: a refused caller gets the
    /// refusal whatever it sent; an allowed one gets InvalidArgs for a wrong signature.
    @Test func methodAuthorizationComesBeforeTheSignatureCheck() async throws {
        try await withBus { fx in
            let server = try await fx.connect()
            let client = try await fx.connect()
            let allowed = Mutex(false)
            let seen = Mutex<[String]>([])
            try server.export(try ExportedObject(path: TestObject.path, interfaces: [
                DBusInterface(TestObject.interface, methods: [
                    DBusMethod("Guarded", in: [DBusArgument("name", .string)], out: [DBusArgument("name", .string)],
                               authorize: { call in
                                   seen.withLock { $0.append(call.arguments.map(\.type.signature).joined()) }
                                   guard allowed.withLock({ $0 }) else { throw DBusError.accessDenied("not you") }
                               }) { call in call.arguments },
                ]),
            ]))
            func guarded(_ arguments: [DBusValue]) async throws -> [DBusValue] {
                try await client.call(destination: server.uniqueName, path: TestObject.path, interface: TestObject.interface,
                                      member: "Guarded", arguments: arguments)
            }
            for arguments: [DBusValue] in [[.string("x")], [.int32(1)], [], [.string("x"), .string("y")]] {
                let e = await expectDBusError(DBusError.Name.accessDenied) { _ = try await guarded(arguments) }
                #expect(e?.message == "not you")
            }
            #expect(seen.withLock { $0 } == ["s", "i", "", "ss"], "authorize sees the arguments as sent")
            allowed.withLock { $0 = true }
            for arguments: [DBusValue] in [[.int32(1)], [], [.string("x"), .string("y")]] {
                await expectDBusError(DBusError.Name.invalidArgs) { _ = try await guarded(arguments) }
            }
            #expect(try await guarded([.string("x")]).first?.stringValue == "x")
            server.close()
            client.close()
        }
    }

    @Test func propertiesGetSetAndAnnounce() async throws {
        try await withBus { fx in
            let server = try await fx.connect()
            let client = try await fx.connect()
            let object = try TestObject.make()
            try server.export(object)
            let dest = server.uniqueName
            let p = TestObject.path
            let props = "org.freedesktop.DBus.Properties"
            let changes = try await client.signals(MatchRule(sender: dest, path: p, interface: props, member: "PropertiesChanged"))

            let name = try await client.call(destination: dest, path: p, interface: props, member: "Get",
                                             arguments: [.string(TestObject.interface), .string("Name")])
            #expect(name == [.variant(.string("test"))])
            let all = try await client.call(destination: dest, path: p, interface: props, member: "GetAll", arguments: [.string(TestObject.interface)])
            let dict = all.first?.stringKeyedDictionary ?? [:]
            #expect(dict["Count"] == .variant(.uint32(0)))
            #expect(dict.count == 6)

            _ = try await client.call(destination: dest, path: p, interface: props, member: "Set",
                                      arguments: [.string(TestObject.interface), .string("Count"), .variant(.uint32(7))])
            #expect(object.property(TestObject.interface, "Count") == .uint32(7))
            let changed = try await next("PropertiesChanged of Count", of: changes)
            #expect(changed.arguments == [.string(TestObject.interface), .variantDictionary(["Count": .uint32(7)]), .array(.string, [])])

            // Setter accepting and refusing.
            _ = try await client.call(destination: dest, path: p, interface: props, member: "Set",
                                      arguments: [.string(TestObject.interface), .string("Level"), .variant(.string("debug"))])
            #expect(object.property(TestObject.interface, "Level") == .string("debug"))
            await expectDBusError(DBusError.Name.invalidArgs) {
                _ = try await client.call(destination: dest, path: p, interface: props, member: "Set",
                                          arguments: [.string(TestObject.interface), .string("Level"), .variant(.string("loud"))])
            }
            await expectDBusError(DBusError.Name.propertyReadOnly) {
                _ = try await client.call(destination: dest, path: p, interface: props, member: "Set",
                                          arguments: [.string(TestObject.interface), .string("Name"), .variant(.string("x"))])
            }
            await expectDBusError(DBusError.Name.invalidArgs) {
                _ = try await client.call(destination: dest, path: p, interface: props, member: "Set",
                                          arguments: [.string(TestObject.interface), .string("Count"), .variant(.string("seven"))])
            }
            await expectDBusError(DBusError.Name.unknownProperty) {
                _ = try await client.call(destination: dest, path: p, interface: props, member: "Get",
                                          arguments: [.string(TestObject.interface), .string("Nope")])
            }
            await expectDBusError(DBusError.Name.unknownInterface) {
                _ = try await client.call(destination: dest, path: p, interface: props, member: "Get",
                                          arguments: [.string("org.example.Nope"), .string("Name")])
            }
            await expectDBusError(DBusError.Name.invalidArgs) {
                _ = try await client.call(destination: dest, path: p, interface: props, member: "Get", arguments: [.string(TestObject.interface)])
            }
            let level = try await next("PropertiesChanged of Level", of: changes)
            #expect(level.arguments[1] == .variantDictionary(["Level": .string("debug")]))

            // The owner pushes several values: one signal; invalidated ones without value.
            try object.setProperties(TestObject.interface, [("Count", .uint32(8)), ("Name", .string("renamed")), ("Secret", .string("t"))])
            let batch = try await next("one PropertiesChanged for three", of: changes)
            #expect(batch.arguments == [.string(TestObject.interface), .variantDictionary(["Count": .uint32(8), "Name": .string("renamed")]),
                                        .stringArray(["Secret"])])
            // Unchanged values announce nothing; the next signal is the next change.
            try object.setProperty(TestObject.interface, "Count", .uint32(8))
            try object.setProperty(TestObject.interface, "Count", .uint32(9))
            let nine = try await next("the change to 9", of: changes)
            #expect(nine.arguments[1] == .variantDictionary(["Count": .uint32(9)]))
            #expect(throws: DBusConnectionError.self) { try object.setProperty(TestObject.interface, "Count", .string("x")) }
            server.close()
            client.close()
        }
    }

    @Test func signalsReachSubscribersAndMatchRulesFilter() async throws {
        try await withBus { fx in
            let server = try await fx.connect()
            let client = try await fx.connect()
            let object = try TestObject.make()
            try server.export(object)
            let pongs = try await client.signals(MatchRule(interface: TestObject.interface, member: "Pong", arguments: [0: "b"]))
            let everything = try await client.signals(MatchRule(path: TestObject.path, interface: TestObject.interface, member: "Everything"))
            try object.emitSignal(interface: TestObject.interface, member: "Pong", arguments: [.string("a")])
            try object.emitSignal(interface: TestObject.interface, member: "Pong", arguments: [.string("b")])
            let pong = try await next("Pong b", of: pongs)
            #expect(pong.arguments == [.string("b")])
            #expect(pong.sender == server.uniqueName)
            let values = Samples.everyType.map { DBusValue.variant($0) }
            try object.emitSignal(interface: TestObject.interface, member: "Everything", arguments: [.array(.variant, values)])
            let got = try await next("Everything", of: everything)
            #expect(got.arguments == [.array(.variant, values)])
            #expect(throws: DBusConnectionError.self) {
                try object.emitSignal(interface: TestObject.interface, member: "Pong", arguments: [.int32(1)])
            }
            // Connection-level signals, free-form.
            try server.emitSignal(path: .root, interface: "org.example.Free", member: "Hi", arguments: [.uint64(1)])
            pongs.cancel()
            everything.cancel()
            server.close()
            client.close()
        }
    }

    @Test func introspectionAndObjectManager() async throws {
        try await withBus { fx in
            let server = try await fx.connect()
            let client = try await fx.connect()
            let root = try ExportedObject(path: try ObjectPath("/org/example"), interfaces: [], objectManager: true)
            try server.export(root)
            let dest = server.uniqueName
            let om = "org.freedesktop.DBus.ObjectManager"
            let added = try await client.signals(MatchRule(sender: dest, interface: om))
            let child = try TestObject.make(path: try ObjectPath("/org/example/child_1"))
            try server.export(child)
            let a = try await next("InterfacesAdded", of: added)
            #expect(a.member == "InterfacesAdded")
            #expect(a.arguments.first == .objectPath(child.path))
            let managed = try await client.call(destination: dest, path: root.path, interface: om, member: "GetManagedObjects")
            let entries = managed.first?.dictionaryEntries ?? []
            #expect(entries.map(\.key) == [.objectPath(child.path)])
            let xmlRoot = try await client.call(destination: dest, path: .root, interface: "org.freedesktop.DBus.Introspectable", member: "Introspect")
            #expect(xmlRoot.first?.stringValue?.contains("<node name=\"org\"/>") == true)
            let xmlObj = try await client.call(destination: dest, path: root.path, interface: "org.freedesktop.DBus.Introspectable", member: "Introspect")
            #expect(xmlObj.first?.stringValue?.contains("<node name=\"child_1\"/>") == true)
            #expect(xmlObj.first?.stringValue?.contains("org.freedesktop.DBus.ObjectManager") == true)
            server.unexport(child.path)
            let r = try await next("InterfacesRemoved", of: added)
            #expect(r.member == "InterfacesRemoved")
            #expect(r.arguments.last?.stringArrayValue?.contains(TestObject.interface) == true)
            await expectDBusError(DBusError.Name.unknownObject) {
                _ = try await client.call(destination: dest, path: child.path, interface: TestObject.interface, member: "EchoAll")
            }
            #expect(throws: DBusConnectionError.self) { try server.export(root) }
            server.close()
            client.close()
        }
    }
}
