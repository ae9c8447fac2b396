import DBus
import Foundation
import Testing
import TestSupport

@Suite struct NameTests {
    @Test func requestAndReleaseNamesWithEvents() async throws {
        try await withBus { fx in
            let a = try await fx.connect()
            let b = try await fx.connect()
            let aEvents = a.events
            let bEvents = b.events
            #expect(try await a.requestName("org.example.Named", flags: [.allowReplacement]) == .primaryOwner)
            _ = try await next("NameAcquired on a", of: aEvents) { $0 == .nameAcquired("org.example.Named") }
            #expect(try await a.requestName("org.example.Named", flags: [.allowReplacement]) == .alreadyOwner)
            #expect(try await b.requestName("org.example.Named", flags: [.doNotQueue]) == .exists)
            #expect(try await b.requestName("org.example.Named") == .inQueue)
            #expect(try await b.requestName("org.example.Named", flags: [.replaceExisting]) == .primaryOwner)
            _ = try await next("NameLost on a", of: aEvents) { $0 == .nameLost("org.example.Named") }
            _ = try await next("NameAcquired on b", of: bEvents) { $0 == .nameAcquired("org.example.Named") }
            #expect(try await a.nameOwner("org.example.Named") == b.uniqueName)
            #expect(try await b.releaseName("org.example.Named"))
            // a queued when it was replaced, so it owns the name again.
            #expect(try await a.nameOwner("org.example.Named") == a.uniqueName)
            #expect(try await a.releaseName("org.example.Named"))
            #expect(try await a.nameOwner("org.example.Named") == nil)
            #expect(try await b.releaseName("org.example.Named") == false)
            await #expect(throws: DBusConnectionError.self) { _ = try await a.requestName(":1.5") }
            a.close()
            b.close()
        }
    }

    @Test func credentialsOfTheCaller() async throws {
        try await withBus { fx in
            let server = try await fx.connect()
            let client = try await fx.connect()
            try server.export(try TestObject.make())
            let reply = try await client.call(destination: server.uniqueName, path: TestObject.path, interface: TestObject.interface, member: "WhoAmI")
            #expect(reply[0] == .uint32(getuid()))
            #expect(reply[1] == .uint32(UInt32(getpid())))
            let groups = reply[2].arrayValue?.compactMap(\.uint32Value) ?? []
            #expect(groups.contains(getgid()))
            server.close()
            client.close()
        }
    }

    @Test func followingAnOwnerAcceptsOnlyItsSignals() async throws {
        try await withBus { fx in
            let watcher = try await fx.connect()
            let first = try await fx.connect()
            let second = try await fx.connect()
            let name = "org.example.HAManager"
            let rule = MatchRule(path: try ObjectPath("/org/example/HAManager"), interface: "org.example.HAManager", member: "RoleChanged")
            let watch = try await watcher.watchNameOwner(name, signals: [rule])
            #expect(watch.initialOwner == nil)
            // Also a broad subscription, so non-owner signals do reach this connection.
            let all = try await watcher.signals(MatchRule(interface: "org.example.HAManager"))
            let bySender = try await watcher.signals(MatchRule(sender: name, interface: "org.example.HAManager"))

            func role(_ c: DBusConnection, _ r: String) throws {
                try c.emitSignal(path: try ObjectPath("/org/example/HAManager"), interface: "org.example.HAManager",
                                 member: "RoleChanged", arguments: [.string(r)])
            }
            #expect(try await first.requestName(name) == .primaryOwner)
            let owned = try await next("first owns", of: watch)
            #expect(owned == .ownerChanged(old: nil, new: first.uniqueName))
            // The bus orders one sender's messages, not two senders': wait for each in turn.
            try role(second, "fake-primary")   // not the owner
            let s1 = try await next("fake", of: all)
            #expect(s1.sender == second.uniqueName)
            try role(first, "primary")
            // The broad subscription sees both; the watch only the owner's.
            let s2 = try await next("real", of: all)
            #expect(s2.sender == first.uniqueName)
            let fromOwner = try await next("owner's RoleChanged", of: watch)
            #expect(fromOwner == .signal(DBusSignal(sender: first.uniqueName ?? "", path: try ObjectPath("/org/example/HAManager"),
                                                     interface: "org.example.HAManager", member: "RoleChanged", arguments: [.string("primary")])))
            let viaRule = try await next("sender-rule signal", of: bySender)
            #expect(viaRule.arguments == [.string("primary")])

            // The owner goes away; a new one comes; the watch sees both, in bus order.
            first.close()
            let gone = try await next("owner gone", of: watch)
            #expect(gone == .ownerChanged(old: first.uniqueName, new: nil))
            #expect(try await second.requestName(name) == .primaryOwner)
            let next2 = try await next("second owns", of: watch)
            #expect(next2 == .ownerChanged(old: nil, new: second.uniqueName))
            #expect(watch.currentOwner == second.uniqueName)
            try role(second, "secondary")
            let fromNewOwner = try await next("new owner's RoleChanged", of: watch)
            if case .signal(let s) = fromNewOwner { #expect(s.arguments == [.string("secondary")]) } else { Issue.record("\(fromNewOwner)") }

            // A watch started while the name is owned knows the owner at once.
            let late = try await watcher.watchNameOwner(name)
            #expect(late.initialOwner == second.uniqueName)
            watch.cancel()
            all.cancel()
            watcher.close()
            second.close()
        }
    }
}
