import BgWorkerCore
import BgWorkerDaemon
import DBus
import Foundation
import Glibc
import Testing
import TestSupport

/// `KeepalivedRoleSource` against two real keepalived nodes (network namespaces), each with its
/// own bus, as `bgworkerd` on each node would follow them.
@Suite(.enabled(if: rootTestsEnabled, "needs root: network namespaces for the keepalived pair"),
       .timeLimit(.minutes(2)))
struct HAKeepalivedRoleSourceTests {
    /// Runs `body` with a source on each node's bus, stopped afterwards whatever happens.
    func withSources(on nodes: [KeepalivedPair.Node], _ body: ([RunningSource]) async throws -> Void) async throws {
        var sources: [RunningSource] = []
        do {
            for node in nodes {
                let instance = try ObjectPath(node.instancePath)
                sources.append(try await RunningSource({ KeepalivedRoleSource(instance: instance, logger: $0) },
                                                       address: node.bus.address))
            }
            try await body(sources)
        } catch {
            for source in sources { await source.stop() }
            throw error
        }
        for source in sources { await source.stop() }
    }

    @Test func theMapping() {
        #expect(KeepalivedRoleSource.role(forVRRPState: 2) == .primary)
        for state: UInt32 in [0, 1, 3] { #expect(KeepalivedRoleSource.role(forVRRPState: state) == .secondary) }
        for state: UInt32 in [4, 97, 98, 99, .max] { #expect(KeepalivedRoleSource.role(forVRRPState: state) == .unknown) }
    }

    @Test func bothNodesMapRightAndSIGTERMMovesTheRoles() async throws {
        try await KeepalivedPair.with { pair in
            try await withSources(on: [pair.a, pair.b]) { sources in
                let (a, b) = (sources[0], sources[1])
                let master = try await pair.waitForMaster()
                #expect(master === pair.a, "A has the higher priority")
                try await a.recorder.waitForLast(.primary)
                try await b.recorder.waitForLast(.secondary)
                #expect(!b.recorder.roles.contains(.primary))
                #expect(a.recorder.reports.value.last?.why == "keepalived VrrpStatusChange 2 (MASTER)")

                // A clean stop of the master: it says goodbye (STOP, VrrpStopped), leaves the bus,
                // and B takes over.
                try await pair.stopKeepalived(on: pair.a)
                try await a.recorder.waitForLast(.unknown)
                try await b.recorder.waitForLast(.primary, timeout: .seconds(15))
                let goodbye = a.recorder.reports.value.last?.why ?? ""
                #expect(["VrrpStatusChange 98 (STOP)", "VrrpStopped", "has no owner"].contains { goodbye.contains($0) }, "\(goodbye)")

                // A comes back (preempting, with the higher priority): the source reads it as it
                // gains its name, and follows it to MASTER; B goes back to BACKUP.
                try await pair.startKeepalived(on: pair.a)
                try await a.recorder.waitForLast(.primary, timeout: .seconds(20))
                try await b.recorder.waitForLast(.secondary, timeout: .seconds(20))
            }
        }
    }

    @Test func keepalivedStoppedIsUnknownAndStartedLaterIsFollowed() async throws {
        try await KeepalivedPair.with(startKeepalived: false) { pair in
            try await withSources(on: [pair.a]) { sources in
                let a = sources[0]
                try await a.recorder.wait(for: [.unknown])
                #expect(a.recorder.reports.value.first?.why == "org.keepalived.Vrrp1 has no owner")
                // Alone on the link, A goes BACKUP, then MASTER after the master-down interval. Its
                // first VrrpStatusChange goes out before it owns its name; the read on gaining the
                // name covers it.
                try await pair.startKeepalived(on: pair.a)
                try await a.recorder.waitForLast(.primary, timeout: .seconds(20))
                let reports = a.recorder.reports.value
                #expect(reports.map(\.role) == [.unknown, .secondary, .primary])
                // BACKUP comes from the read on gaining the name, or from a VrrpStatusChange sent
                // after that (then the read, in flight, is superseded): both are keepalived's word.
                #expect(reports[1].why.hasPrefix("keepalived State ") || reports[1].why.hasPrefix("keepalived VrrpStatusChange"),
                        "\(reports[1].why)")

                // A crash: no goodbye, only the name's owner going away.
                try await pair.stopKeepalived(on: pair.a, signal: SIGKILL)
                try await a.recorder.waitForLast(.unknown)
                #expect(a.recorder.reports.value.last?.why == "org.keepalived.Vrrp1 has no owner")
            }
        }
    }

    @Test func forgedSignalsAreIgnored() async throws {
        try await KeepalivedPair.with { pair in
            try await pair.waitForStatus(KeepalivedPair.Status.master, on: pair.a)
            try await pair.waitForStatus(KeepalivedPair.Status.backup, on: pair.b)
            try await withSources(on: [pair.b]) { sources in
                let b = sources[0]
                try await b.recorder.wait(for: [.secondary])
                // busctl, a client of its own on B's bus, claims MASTER, then that VRRP stopped.
                for forged in [
                    [pair.b.instancePath, "org.keepalived.Vrrp1.Instance", "VrrpStatusChange", "u", "2"],
                    ["/org/keepalived/Vrrp1/Vrrp", "org.keepalived.Vrrp1.Vrrp", "VrrpStopped"],
                ] {
                    let r = try await run(["busctl", "--address=\(pair.b.bus.unixAddress)", "emit"] + forged)
                    #expect(r.status == 0, "\(r.stderr)")
                    let member = forged[2]
                    try await b.log.wait("a warning about the forged \(member)") { lines in
                        lines.contains { $0.level == .warning && $0.message.contains("ignored \(member) from :")
                            && $0.message.contains("not the owner of org.keepalived.Vrrp1") }
                    }
                }
                #expect(b.recorder.roles == [.secondary])
                // keepalived's own signals still count: B becomes MASTER when A stops.
                try await pair.stopKeepalived(on: pair.a)
                try await b.recorder.wait(for: [.secondary, .primary], timeout: .seconds(15))
            }
        }
    }
}
