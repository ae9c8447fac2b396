import DBus
import Foundation
import Testing
import TestSupport

/// `watchNameOwner(reportingOthers:)` and `NameOwnerWatch.callOwner`: what an HA source needs to
/// read a state and follow its change signals in one order, and to name a forger in its log.
@Suite struct OwnerWatchTests {
    static let name = "org.example.Watched"
    static let path = try! ObjectPath("/org/example/Watched")
    static let interface = "org.example.Watched"

    static func changed(_ value: String) throws -> (ExportedObject) throws -> Void {
        { try $0.emitSignal(interface: interface, member: "Changed", arguments: [.string(value)]) }
    }

    /// An object whose `Read` emits `Changed` for each of `before` and then answers `answer`:
    /// the signals go out before the reply (the layer keeps a handler's signals before its reply).
    static func server(before: [String], answer: String) throws -> ExportedObject {
        try ExportedObject(path: path, interfaces: [
            DBusInterface(interface, methods: [
                DBusMethod("Read", out: [DBusArgument("value", .string)]) { call in
                    for value in before { try changed(value)(call.object) }
                    return [.string(answer)]
                },
            ], signals: [DBusSignalDeclaration("Changed", [DBusArgument("value", .string)])]),
        ])
    }

    static var rule: MatchRule { MatchRule(path: path, interface: interface, member: "Changed") }

    @Test func aReplyTakesItsPlaceAmongTheOwnersSignals() async throws {
        try await withBus { fx in
            let watcher = try await fx.connect()
            let owner = try await fx.connect()
            let object = try Self.server(before: ["b1", "b2"], answer: "value")
            try owner.export(object)
            #expect(try await owner.requestName(Self.name) == .primaryOwner)
            let watch = try await watcher.watchNameOwner(Self.name, signals: [Self.rule])
            #expect(watch.initialOwner == owner.uniqueName)
            let id = try watch.callOwner(path: Self.path, interface: Self.interface, member: "Read")
            func nextEvent() async throws -> NameOwnerEvent { try await next("watch event", of: watch) }
            func signalValue(_ e: NameOwnerEvent) -> String? {
                if case .signal(let s) = e { return s.arguments.first?.stringValue }
                return nil
            }
            #expect(signalValue(try await nextEvent()) == "b1")
            #expect(signalValue(try await nextEvent()) == "b2")
            let reply = try await nextEvent()
            #expect(reply == .ownerReply(OwnerCallReply(id: id, owner: owner.uniqueName, result: .success([.string("value")]))))
            try Self.changed("after")(object)
            #expect(signalValue(try await nextEvent()) == "after")
            watch.cancel()
            watcher.close()
            owner.close()
        }
    }

    @Test func aCallWithNoOwnerAnswersNameHasNoOwner() async throws {
        try await withBus { fx in
            let watcher = try await fx.connect()
            let watch = try await watcher.watchNameOwner(Self.name, signals: [Self.rule])
            let id = try watch.callOwner(path: Self.path, interface: Self.interface, member: "Read")
            let event = try await next("reply", of: watch)
            guard case .ownerReply(let reply) = event else { Issue.record("\(event)"); return }
            #expect(reply.id == id)
            #expect(reply.owner == nil)
            #expect(reply.result == .failure(DBusError(DBusError.Name.nameHasNoOwner, "\(Self.name) has no owner")))
            watcher.close()
        }
    }

    @Test func othersSignalsAreReportedOnlyWhenAskedFor() async throws {
        try await withBus { fx in
            let watcher = try await fx.connect()
            let owner = try await fx.connect()
            let forger = try await fx.connect()
            #expect(try await owner.requestName(Self.name) == .primaryOwner)
            let reporting = try await watcher.watchNameOwner(Self.name, signals: [Self.rule], reportingOthers: true)
            let silent = try await watcher.watchNameOwner(Self.name, signals: [Self.rule])
            func emit(_ c: DBusConnection, _ value: String) throws {
                try c.emitSignal(path: Self.path, interface: Self.interface, member: "Changed", arguments: [.string(value)])
            }
            // The bus orders one sender's messages, not two senders': wait for each in turn.
            try emit(forger, "forged")
            let first = try await next("forged", of: reporting)
            guard case .ignoredSignal(let forged, let ownerThen) = first else { Issue.record("\(first)"); return }
            #expect(forged.sender == forger.uniqueName)
            #expect(forged.arguments == [.string("forged")])
            #expect(ownerThen == owner.uniqueName)
            try emit(owner, "real")
            let second = try await next("real", of: reporting)
            guard case .signal(let real) = second else { Issue.record("\(second)"); return }
            #expect(real.sender == owner.uniqueName)
            // The watch that did not ask sees only the owner's signal.
            let only = try await next("real, silent watch", of: silent)
            guard case .signal(let s) = only else { Issue.record("\(only)"); return }
            #expect(s.arguments == [.string("real")])

            // With no owner every sender is another.
            owner.close()
            _ = try await next("owner gone", of: reporting) { $0 == .ownerChanged(old: owner.uniqueName, new: nil) }
            try emit(forger, "forged again")
            let third = try await next("forged, no owner", of: reporting)
            guard case .ignoredSignal(let again, let noOwner) = third else { Issue.record("\(third)"); return }
            #expect(again.arguments == [.string("forged again")])
            #expect(noOwner == nil)

            // Cancelling removes the sender-less rule too: the bus keeps no match of ours.
            reporting.cancel()
            silent.cancel()
            // RemoveMatch goes out without a reply; a round trip on the watcher orders it first.
            _ = try await watcher.nameOwner("org.freedesktop.DBus")
            let monitor = try await fx.connect()
            let stats = try await monitor.call(destination: "org.freedesktop.DBus", path: try ObjectPath("/org/freedesktop/DBus"),
                                               interface: "org.freedesktop.DBus.Debug.Stats", member: "GetConnectionStats",
                                               arguments: [.string(watcher.uniqueName ?? "")])
            let rules = try #require(stats.first?.stringKeyedDictionary?["MatchRules"]?.unwrappingVariant.uint32Value)
            #expect(rules == 0)
            watcher.close()
            forger.close()
            monitor.close()
        }
    }
}
