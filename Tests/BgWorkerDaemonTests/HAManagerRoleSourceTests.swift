import BgWorkerCore
import BgWorkerDaemon
import DBus
import Foundation
import Testing
import TestSupport

/// `HAManagerRoleSource` against a real dbus-daemon and a real HA manager process (dbus-python,
/// driven by the test over the bus).
@Suite(.enabled(if: ScriptedHAManager.available || isCI, "needs /usr/bin/python3 with python3-dbus and python3-gi"),
       .timeLimit(.minutes(1)))
struct HAManagerRoleSourceTests {
    func withManager(role: String = "primary", own: Bool = true,
                     _ body: (PrivateBus, ScriptedHAManager, RunningSource) async throws -> Void) async throws {
        let bus = try await PrivateBus()
        do {
            let manager = try await ScriptedHAManager(address: bus.address, role: role, own: own)
            let source = try await RunningSource({ HAManagerRoleSource(logger: $0) }, address: bus.address)
            do {
                try await body(bus, manager, source)
            } catch {
                await source.stop()
                await manager.stop()
                throw error
            }
            await source.stop()
            await manager.stop()
        } catch {
            await bus.stop()
            throw error
        }
        await bus.stop()
    }

    @Test func everyRoleAndRawValues() async throws {
        try await withManager(role: "primary") { _, manager, source in
            try await source.recorder.wait(for: [.primary])
            #expect(source.recorder.reports.value[0].why == "org.example.HAManager Role \"primary\"")
            try await manager.setRole("secondary")
            try await source.recorder.wait(for: [.primary, .secondary])
            #expect(source.recorder.reports.value.last?.why == "org.example.HAManager RoleChanged \"secondary\"")
            try await manager.setRole("PRIMARY")   // not a role: case matters
            try await source.recorder.wait(for: [.primary, .secondary, .unknown])
            try await manager.setRole("primary")
            try await manager.setRole("")
            try await manager.setRole("secondary")
            try await manager.setRole("standalone\n\u{1}")   // not an HA manager's role either
            try await source.recorder.wait(for: [.primary, .secondary, .unknown, .primary, .unknown, .secondary, .unknown])
            #expect(source.recorder.reports.value.last?.why == "org.example.HAManager RoleChanged \"standalone??\"")
            // A RoleChanged with the wrong argument type from the owner: unknown, no crash.
            try await manager.setRole("primary")
            try await manager.call("EmitWrongType", [.uint32(2)])
            try await source.recorder.wait(for: [.primary, .secondary, .unknown, .primary, .unknown, .secondary, .unknown, .primary, .unknown])
            #expect(source.recorder.reports.value.last?.why == "org.example.HAManager RoleChanged with arguments 'u'")
        }
    }

    @Test func aRoleOfTheWrongTypeIsUnknown() async throws {
        try await withManager(own: false) { _, manager, source in
            try await source.recorder.wait(for: [.unknown])
            try await manager.call("IntRole", [.bool(true)])
            try await manager.own()
            try await source.recorder.waitForLast(.unknown)
            // Owner gained: read again; the reply is an int, so still unknown, with that reason.
            try await source.log.wait("the read") { lines in lines.contains { $0.message.contains("Role of type 'i'") } }
            try await manager.call("IntRole", [.bool(false)])
            try await manager.setRole("secondary")
            try await source.recorder.wait(for: [.unknown, .secondary])
        }
    }

    @Test func theManagerStoppingAndRestartingIsFollowed() async throws {
        try await withManager(role: "primary") { bus, manager, source in
            try await source.recorder.wait(for: [.primary])
            await manager.stop()   // its connection ends: the name loses its owner
            try await source.recorder.wait(for: [.primary, .unknown])
            #expect(source.recorder.reports.value.last?.why == "org.example.HAManager has no owner")
            // A new manager process: no signal needed, the role is read as the name is gained.
            let second = try await ScriptedHAManager(address: bus.address, role: "secondary")
            try await source.recorder.wait(for: [.primary, .unknown, .secondary])
            #expect(source.recorder.reports.value.last?.why == "org.example.HAManager Role \"secondary\"")
            await second.stop()
            try await source.recorder.wait(for: [.primary, .unknown, .secondary, .unknown])
        }
    }

    @Test func aManagerStartedAfterTheSourceIsFollowedAtOnce() async throws {
        try await withManager(role: "secondary", own: false) { _, manager, source in
            try await source.recorder.wait(for: [.unknown])
            try await manager.own()
            try await source.recorder.wait(for: [.unknown, .secondary])
            try await manager.release()
            try await source.recorder.wait(for: [.unknown, .secondary, .unknown])
        }
    }

    @Test func forgedRoleChangedIsIgnoredAndLogged() async throws {
        try await withManager(role: "primary") { bus, manager, source in
            try await source.recorder.wait(for: [.primary])
            // From busctl, a client of its own.
            try await forgeRoleChanged("secondary", address: bus.address)
            let busctlLines = try await source.log.wait("a warning about busctl's signal") { lines in
                lines.contains { $0.level == .warning && $0.message.contains("ignored RoleChanged from :") }
            }
            // busctl is usually gone by then: its pid is left out, not logged as `sender-pid=""`.
            let busctlWarning = try #require(busctlLines.first { $0.message.contains("ignored RoleChanged from :") })
            #expect(busctlWarning.metadata["sender-pid"].map { Int32($0) != nil } ?? true, "\(busctlWarning.metadata)")
            // From a connection whose name and pid we know.
            let forger = try await DBusConnection.connect(.address(bus.address))
            defer { forger.close() }
            try forger.emitSignal(path: try ObjectPath("/org/example/HAManager"), interface: "org.example.HAManager",
                                  member: "RoleChanged", arguments: [.string("secondary")])
            let forgerName = try #require(forger.uniqueName)
            let lines = try await source.log.wait("a warning naming \(forgerName)") { lines in
                lines.contains { $0.level == .warning && $0.message.contains("from \(forgerName) (pid \(getpid()))") }
            }
            let warning = try #require(lines.first { $0.message.contains(forgerName) })
            #expect(warning.message.contains("not the owner of org.example.HAManager, the owner is \(manager.uniqueName)"))
            #expect(warning.metadata["sender"] == forgerName)
            #expect(warning.metadata["sender-pid"] == String(getpid()))
            // The forgeries changed nothing: the next report is the owner's next change.
            try await manager.setRole("secondary")
            try await source.recorder.wait(for: [.primary, .secondary])

            // With no owner, the same.
            await manager.stop()
            try await source.recorder.wait(for: [.primary, .secondary, .unknown])
            try forger.emitSignal(path: try ObjectPath("/org/example/HAManager"), interface: "org.example.HAManager",
                                  member: "RoleChanged", arguments: [.string("primary")])
            try await source.log.wait("a warning with no owner") { lines in
                lines.contains { $0.level == .warning && $0.message.contains("it has no owner") }
            }
            #expect(source.recorder.roles == [.primary, .secondary, .unknown])
        }
    }

    @Test func aBurstIsDeliveredInOrder() async throws {
        try await withManager(role: "primary") { _, manager, source in
            try await source.recorder.wait(for: [.primary])
            var sent: [String] = []
            for i in 0..<200 { sent.append(i % 3 == 0 ? "secondary" : (i % 3 == 1 ? "primary" : "bogus")) }
            try await manager.burst(sent)
            var expected: [HARole] = [.primary]
            for text in sent {
                let role = HAManagerRoleSource.role(forRoleText: text)
                if role != expected.last { expected.append(role) }
            }
            try await source.recorder.wait(for: expected)
        }
    }

    // MARK: Reads and signals racing

    @Test func aSignalWhileTheReadIsInFlightIsNotUndoneByTheRead() async throws {
        try await withManager(role: "primary", own: false) { _, manager, source in
            try await source.recorder.wait(for: [.unknown])
            try await manager.hold(true)
            try await manager.own()
            try await manager.waitHeld()          // our Get has reached the manager and waits
            try await manager.setRole("secondary") // a change while the read is in flight
            try await source.recorder.wait(for: [.unknown, .secondary])
            // The manager answers from a snapshot taken before the change: too old to count.
            try await manager.answer("primary")
            // Something later from the owner, so that the reply has surely been processed.
            try await manager.setRole("bogus")
            try await source.recorder.waitForLast(.unknown)
            #expect(source.recorder.roles == [.unknown, .secondary, .unknown], "the stale reply was applied")
        }
    }

    @Test func aReplySentBeforeASignalIsAppliedBeforeIt() async throws {
        try await withManager(role: "primary", own: false) { _, manager, source in
            try await source.recorder.wait(for: [.unknown])
            try await manager.hold(true)
            try await manager.own()
            try await manager.waitHeld()
            // Answer, then change at once: the reply is older than the signal, and both must count.
            try await manager.answerThenChange(answer: "primary", role: "secondary")
            try await source.recorder.wait(for: [.unknown, .primary, .secondary])
        }
    }

    @Test func aLateReplyFromAFormerOwnerIsDropped() async throws {
        try await withManager(role: "primary", own: false) { bus, first, source in
            try await source.recorder.wait(for: [.unknown])
            try await first.hold(true)
            try await first.own()
            try await first.waitHeld()
            try await first.release()             // still connected, our Get still held
            // The new owner holds our read too, so that a read is pending when the old reply comes.
            let second = try await ScriptedHAManager(address: bus.address, role: "secondary", own: false)
            try await second.hold(true)
            try await second.own()
            try await second.waitHeld()
            try await first.answer("primary")     // the former owner answers now
            try await second.answer("secondary")
            try await source.recorder.wait(for: [.unknown, .secondary])
            try await second.setRole("bogus")     // a later message from the new owner
            try await source.recorder.waitForLast(.unknown)
            #expect(source.recorder.roles == [.unknown, .secondary, .unknown], "the former owner's reply was applied")
            await second.stop()
        }
    }

    @Test func aNonDefaultServiceName() async throws {
        let bus = try await PrivateBus()
        let manager = try await ScriptedHAManager(address: bus.address, name: "com.example.Cluster", role: "secondary")
        let source = try await RunningSource({ HAManagerRoleSource(service: "com.example.Cluster", logger: $0) }, address: bus.address)
        try await source.recorder.wait(for: [.secondary])
        await source.stop()
        await manager.stop()
        await bus.stop()
    }

    @Test func theSourceReturnsWhenTheConnectionEnds() async throws {
        try await withManager(role: "primary") { bus, _, source in
            try await source.recorder.wait(for: [.primary])
            await bus.kill()
            try await source.finished.wait("run returned") { $0 }
        }
    }

    @Test func makeRoleSourceFollowsTheSettings() throws {
        #expect(makeRoleSource(for: HASettings(source: .none)) == nil)
        let keepalived = try #require(makeRoleSource(for: HASettings(source: .keepalived(instance: "/org/keepalived/Vrrp1/Instance/eth0/51/IPv4"))) as? KeepalivedRoleSource)
        #expect(keepalived.instance.rawValue == "/org/keepalived/Vrrp1/Instance/eth0/51/IPv4")
        let dbus = try #require(makeRoleSource(for: HASettings(source: .dbus(service: "com.example.Cluster"))) as? HAManagerRoleSource)
        #expect(dbus.service == "com.example.Cluster")
    }
}
