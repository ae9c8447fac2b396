import CDBus
@testable import DBus
import Foundation
import Testing
import TestSupport

@Suite struct ResilienceTests {
    static let slow = DBusInterface("org.example.Slow", methods: [
        DBusMethod("Hang") { _ in
            // Suspends until cancelled or the test ends; never answers on its own.
            let (stream, _) = AsyncStream<Void>.makeStream()
            for await _ in stream {}
            return []
        },
        DBusMethod("Double", in: [DBusArgument("x", .int64)], out: [DBusArgument("y", .int64)]) { call in
            // Suspends once, so replies come from tasks resumed in any order.
            await Task.yield()
            return [.int64((call.arguments[0].int64Value ?? 0) &* 2)]
        },
    ])

    @Test func killingTheBusEndsConnectionsAndANewBusWorks() async throws {
        let first = try await PrivateBus()
        let socket = first.socketPath
        let object = try ExportedObject(path: Samples.path, interfaces: [Self.slow])
        let server = try await DBusConnection.connect(.address(first.address))
        let client = try await DBusConnection.connect(.address(first.address))
        try server.export(object)
        _ = try await server.requestName("org.example.Resilient")
        let serverEvents = server.events
        let clientEvents = client.events
        let watch = try await client.watchNameOwner("org.example.Resilient")
        let signals = try await client.signals(MatchRule(interface: "org.example.Anything"))
        let destination = server.uniqueName
        let pending = Task {
            try await client.call(destination: destination, path: Samples.path, interface: "org.example.Slow", member: "Hang",
                                  timeout: .seconds(60))
        }
        // The call has reached the server once a second call behind it on the same path is answered.
        _ = try await client.call(destination: destination, path: Samples.path, interface: "org.example.Slow", member: "Double",
                                  arguments: [.int64(1)])

        let killedAt = ContinuousClock.now
        await first.kill()
        let serverEnd = try await next("server disconnected", of: serverEvents) { if case .disconnected = $0 { true } else { false } }
        let clientEnd = try await next("client disconnected", of: clientEvents) { if case .disconnected = $0 { true } else { false } }
        guard case .disconnected(let reason) = clientEnd else { return }
        #expect(reason.code == .disconnected)
        #expect(serverEnd == clientEnd)
        do {
            _ = try await pending.value
            Issue.record("the pending call succeeded")
        } catch let e as DBusConnectionError {
            #expect(e.code == .disconnected)
        }
        #expect(ContinuousClock.now - killedAt < .seconds(3))
        #expect(!client.isConnected)
        // Subscriptions end; new work fails at once; a late events stream gets the end at once.
        for await _ in watch {}
        for await _ in signals {}
        await #expect(throws: DBusConnectionError.self) {
            _ = try await client.call(destination: destination, path: Samples.path, interface: nil, member: "Double", arguments: [.int64(1)])
        }
        #expect(throws: DBusConnectionError.self) { try client.emitSignal(path: .root, interface: "org.example.X", member: "Y") }
        #expect(throws: DBusConnectionError.self) { try server.export(object) }
        var late: [ConnectionEvent] = []
        for await e in client.events { late.append(e) }
        #expect(late == [clientEnd])

        // A new bus on the same socket: new connections work, the same object is exported again.
        let second = try await PrivateBus(socketPath: socket)
        let server2 = try await DBusConnection.connect(.address(second.address))
        let client2 = try await DBusConnection.connect(.address(second.address))
        try server2.export(object)
        _ = try await server2.requestName("org.example.Resilient")
        let reply = try await client2.call(destination: "org.example.Resilient", path: Samples.path, interface: "org.example.Slow",
                                           member: "Double", arguments: [.int64(21)])
        #expect(reply == [.int64(42)])
        server2.close()
        client2.close()
        await second.stop()
        first.directory.remove()
    }

    @Test func closeEndsPendingCallsWithClosed() async throws {
        try await withBus { fx in
            let server = try await fx.connect()
            let client = try await fx.connect()
            try server.export(try ExportedObject(path: Samples.path, interfaces: [Self.slow]))
            let destination = server.uniqueName
            let pending = Task {
                try await client.call(destination: destination, path: Samples.path, interface: "org.example.Slow", member: "Hang")
            }
            _ = try await client.call(destination: destination, path: Samples.path, interface: "org.example.Slow", member: "Double",
                                      arguments: [.int64(1)])
            client.close()
            do {
                _ = try await pending.value
                Issue.record("the pending call succeeded")
            } catch let e as DBusConnectionError {
                #expect(e.code == .closed)
            }
            server.close()
        }
    }

    @Test func aThousandConcurrentCalls() async throws {
        try await withBus { fx in
            let server = try await fx.connect()
            let client = try await fx.connect()
            try server.export(try ExportedObject(path: Samples.path, interfaces: [Self.slow]))
            let destination = server.uniqueName
            let results = try await withThrowingTaskGroup(of: (Int64, [DBusValue]).self) { group in
                for i in Int64(0)..<1000 {
                    group.addTask {
                        (i, try await client.call(destination: destination, path: Samples.path, interface: "org.example.Slow",
                                                  member: "Double", arguments: [.int64(i)]))
                    }
                }
                var all: [Int64: [DBusValue]] = [:]
                for try await (i, reply) in group { all[i] = reply }
                return all
            }
            #expect(results.count == 1000)
            #expect(results.allSatisfy { $0.value == [.int64($0.key * 2)] })
            server.close()
            client.close()
        }
    }

    /// Random and mutated messages, sent with raw libdbus to a server object: every call gets
    /// an answer (a reply or a standard error), and the server goes on answering afterwards.
    @Test func fuzzedMessagesNeverBreakTheServer() async throws {
        try await withBus { fx in
            let server = try await fx.connect()
            try server.export(try ExportedObject(path: try ObjectPath("/org/example"), interfaces: [], objectManager: true))
            try server.export(try TestObject.make())
            let destination = server.uniqueName ?? ""
            let seed = UInt64(ProcessInfo.processInfo.environment["FUZZ_SEED"] ?? "") ?? UInt64.random(in: 1...UInt64.max)
            let address = fx.bus.address
            let outcome = await onThread {
                var fuzzer = Fuzzer(seed: seed)
                return fuzzer.run(address: address, destination: destination, count: 1500)
            }
            #expect(outcome.failure == nil, "seed \(seed): \(outcome.failure ?? "")")
            #expect(outcome.answered > 1000, "seed \(seed)")
            #expect(outcome.mutated > 50, "seed \(seed)")
            let unexpected = outcome.errorNames.subtracting(Fuzzer.expectedErrors)
            #expect(unexpected.isEmpty, "seed \(seed): \(unexpected)")
            // Still answering, and still connected.
            let client = try await fx.connect()
            let sum = try await client.call(destination: destination, path: TestObject.path, interface: TestObject.interface,
                                            member: "Add", arguments: [.int32(1), .int32(2)])
            #expect(sum == [.int32(3)])
            #expect(server.isConnected)
            client.close()
            server.close()
        }
    }
}

/// Builds random messages with libdbus directly (blocking calls on its own thread).
struct Fuzzer {
    static let expectedErrors: Set<String> = [
        DBusError.Name.invalidArgs, DBusError.Name.unknownMethod, DBusError.Name.unknownObject,
        DBusError.Name.unknownInterface, DBusError.Name.unknownProperty, DBusError.Name.propertyReadOnly,
        DBusError.Name.failed,
    ]

    struct Outcome: Sendable {
        var answered = 0
        var mutated = 0
        var errorNames: Set<String> = []
        var failure: String?
    }

    var rng: SeededRandom

    init(seed: UInt64) { rng = SeededRandom(seed: seed) }

    mutating func pick<T>(_ items: [T]) -> T { items[Int(rng.next() % UInt64(items.count))] }
    mutating func chance(_ percent: UInt64) -> Bool { rng.next() % 100 < percent }

    mutating func randomType(depth: Int) -> DBusType {
        let basics: [DBusType] = [.byte, .bool, .int16, .uint16, .int32, .uint32, .int64, .uint64, .double, .string, .objectPath, .signature]
        if depth >= 3 || chance(55) { return pick(basics) }
        switch rng.next() % 4 {
        case 0: return .array(randomType(depth: depth + 1))
        case 1: return .dictionary(key: pick(basics), value: randomType(depth: depth + 1))
        case 2: return .structure((0..<(1 + Int(rng.next() % 3))).map { _ in randomType(depth: depth + 1) })
        default: return .variant
        }
    }

    mutating func randomString() -> String {
        pick(["", "a", "org.example.Test", "Name", "Count", "Level", "debug", "héllo ☃", String(repeating: "x", count: 300), "'quote'"])
    }

    mutating func randomValue(_ type: DBusType, depth: Int = 0) -> DBusValue {
        switch type {
        case .byte: .byte(UInt8(truncatingIfNeeded: rng.next()))
        case .bool: .bool(chance(50))
        case .int16: .int16(Int16(truncatingIfNeeded: rng.next()))
        case .uint16: .uint16(UInt16(truncatingIfNeeded: rng.next()))
        case .int32: .int32(Int32(truncatingIfNeeded: rng.next()))
        case .uint32: .uint32(UInt32(truncatingIfNeeded: rng.next()))
        case .int64: .int64(Int64(bitPattern: rng.next()))
        case .uint64: .uint64(rng.next())
        case .double: .double(Double(bitPattern: rng.next()).isNaN ? 0 : Double(bitPattern: rng.next() & 0x7FEF_FFFF_FFFF_FFFF))
        case .string: .string(randomString())
        case .objectPath: .objectPath(pick([.root, Samples.path, TestObject.path]))
        case .signature: .signature(Signature(unchecked: [randomType(depth: 2)]))
        // A descriptor of our own (a copy of stdin): the value closes it, never fd 0 itself.
        case .unixFD: .unixFD((try? UnixFD(duplicating: 0)) ?? UnixFD(taking: -1))
        case .variant:
            .variant(depth > 3 ? .int32(1) : randomValue(randomType(depth: 2), depth: depth + 1))
        case .array(let e): .array(e, (0..<Int(rng.next() % 4)).map { _ in randomValue(e, depth: depth + 1) })
        case .dictionary(let k, let v):
            .dictionary(key: k, value: v, (0..<Int(rng.next() % 3)).map { _ in
                DBusDictEntry(randomValue(k, depth: depth + 1), randomValue(v, depth: depth + 1))
            })
        case .structure(let fields): .structure(fields.map { randomValue($0, depth: depth + 1) })
        }
    }

    /// Arguments close to what the methods expect, or anything.
    mutating func randomArguments(for member: String) -> [DBusValue] {
        if chance(30) {
            switch member {
            case "Get": return [.string(randomString()), .string(randomString())]
            case "Set": return [.string(pick(["org.example.Test", ""])), .string(pick(["Name", "Count", "Level", "Options", "Nope"])),
                                .variant(randomValue(randomType(depth: 1)))]
            case "GetAll": return [.string(randomString())]
            case "Add": return [.int32(1), .int32(2)]
            default: break
            }
        }
        return (0..<Int(rng.next() % 4)).map { _ in randomValue(randomType(depth: 0)) }
    }

    mutating func run(address: String, destination: String, count: Int) -> Outcome {
        var outcome = Outcome()
        var error = CDBus.DBusError()
        dbus_error_init(&error)
        guard let connection = dbus_connection_open_private(address, &error), dbus_bus_register(connection, &error) != 0 else {
            outcome.failure = "cannot connect: \(error.message.map { String(cString: $0) } ?? "")"
            dbus_error_free(&error)
            return outcome
        }
        defer {
            dbus_connection_close(connection)
            dbus_connection_unref(connection)
        }
        let members = ["Echo", "Add", "Concat", "Describe", "Fail", "WrongReply", "Ping", "Get", "GetAll", "Set", "Introspect",
                       "GetManagedObjects", "GetMachineId", "Nope"]
        let interfaces: [String?] = ["org.example.Test", "org.freedesktop.DBus.Properties", "org.freedesktop.DBus.Introspectable",
                                     "org.freedesktop.DBus.Peer", "org.freedesktop.DBus.ObjectManager", nil, "org.example.Bogus"]
        let paths = ["/org/example/Test", "/org/example", "/", "/org", "/nope/x"]

        for i in 0..<count {
            let member = pick(members)
            let iface = pick(interfaces)
            let path = pick(paths)
            guard let message = (iface.withOptionalCString { dbus_message_new_method_call(destination, path, $0, member) }) else { continue }
            var args = randomArguments(for: member)
            if member == "Fail" && chance(50) { args = [.string("org.example.Test.Error.Fuzz"), .string("x")] }
            do {
                try ValueValidation.validateBody(args)
                try Marshal.append(args, to: message)
            } catch {
                dbus_message_unref(message)
                continue
            }
            let toSend: OpaquePointer
            if i % 3 == 0, let mutated = mutate(message) {
                dbus_message_unref(message)
                toSend = mutated
                outcome.mutated += 1
                dbus_message_set_destination(toSend, destination)
            } else {
                toSend = message
            }
            defer { dbus_message_unref(toSend) }
            guard dbus_message_get_type(toSend) == DBUS_MESSAGE_TYPE_METHOD_CALL, dbus_message_get_no_reply(toSend) == 0 else {
                _ = dbus_connection_send(connection, toSend, nil)
                continue
            }
            dbus_error_init(&error)
            if let reply = dbus_connection_send_with_reply_and_block(connection, toSend, 5000, &error) {
                dbus_message_unref(reply)
                outcome.answered += 1
            } else {
                let name = error.name.map { String(cString: $0) } ?? "?"
                let text = error.message.map { String(cString: $0) } ?? ""
                dbus_error_free(&error)
                if name == DBusError.Name.noReply || name == "org.freedesktop.DBus.Error.Disconnected" {
                    outcome.failure = "message \(i) (\(iface ?? "-").\(member) at \(path)): \(name): \(text)"
                    return outcome
                }
                // Fail(name, text) answers with whatever valid name it is given.
                let sentMember = dbus_message_get_member(toSend).map { String(cString: $0) }
                if sentMember != "Fail" { outcome.errorNames.insert(name) }
                outcome.answered += 1
            }
        }
        return outcome
    }

    /// Flips a few bytes of the marshalled message; returns it if libdbus still accepts it.
    mutating func mutate(_ message: OpaquePointer) -> OpaquePointer? {
        var raw: UnsafeMutablePointer<CChar>?
        var length: Int32 = 0
        dbus_message_set_serial(message, 1)
        guard dbus_message_marshal(message, &raw, &length) != 0, let raw else { return nil }
        defer { dbus_free(raw) }
        // Leave the fixed header (endianness, type, flags, version, lengths, serial) alone.
        guard length > 16 else { return nil }
        let letters = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ybnqiuxtdsogvha({})".utf8)
        for _ in 0..<(1 + Int(rng.next() % 2)) {
            let at = 16 + Int(rng.next() % UInt64(length - 16))
            let old = UInt8(bitPattern: raw[at])
            if chance(70), letters.contains(old) {
                // Another letter keeps most strings valid while changing names, property
                // names and signature characters (so the body is read as other types).
                raw[at] = CChar(bitPattern: pick(letters))
            } else {
                raw[at] = CChar(truncatingIfNeeded: Int(rng.next() & 0xFF))
            }
        }
        var error = CDBus.DBusError()
        dbus_error_init(&error)
        defer { dbus_error_free(&error) }
        return dbus_message_demarshal(raw, length, &error)
    }
}
