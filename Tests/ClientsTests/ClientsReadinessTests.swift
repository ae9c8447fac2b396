import BgWorkerAPI
import DBus
import Foundation
import Testing
import TestSupport

/// bgworkerctl and the readiness properties of the contract (`StatusText s`, `ReadyAt t`),
/// against the stand-in on a real bus: shown when the daemon has them, left out when it does not
/// (a daemon older than the notify protocol), control characters escaped.
@Suite("bgworkerctl and worker readiness")
struct ClientsReadinessTests {
    static let readyAt: UInt64 = 1_700_000_001_000_000  // 2023-11-14 22:13:21 UTC
    static let seeds = [
        WorkerSeed(name: "importer", state: "running", enabled: true, pid: 4242, statusText: "cycle 3 \u{1B}[31mred\u{85}",
                   readyAt: readyAt),
        WorkerSeed(name: "loader", state: "starting", enabled: true, pid: 77, statusText: "", readyAt: 0),
        WorkerSeed(name: "old", state: "running", enabled: true, pid: 88),
    ]

    static func withDaemon(_ body: (PrivateBus, StandInDaemon) async throws -> Void) async throws {
        try await withBus { bus in
            let daemon = try await StandInDaemon.start(on: bus, workers: seeds)
            defer { daemon.detach() }
            try await body(bus, daemon)
        }
    }

    @Test func statusNameShowsReadySinceAndTheStatusTextEscaped() async throws {
        try await Self.withDaemon { bus, _ in
            let r = try await ctl(bus, ["status", "importer"])
            #expect(r.status == 0, "\(r.stderr)")
            #expect(r.stdout == """
                     Name: importer
                    State: running
                    Since: 2023-11-14 22:13:20
                    Ready: since 2023-11-14 22:13:21
                      Pid: 4242
                   Status: "cycle 3 \\x1b[31mred\\x85"
                  Enabled: yes
                 Restarts: 0
                Last exit: -
                   Run on: primary
                   Object: \(BgWorkerBus.workerPathPrefix)importer
                """)
        }
    }

    @Test func notReadyAnEmptyStatusOrADaemonWithoutThePropertiesShowNeither() async throws {
        try await Self.withDaemon { bus, _ in
            for name in ["loader", "old"] {
                let r = try await ctl(bus, ["status", name])
                #expect(r.status == 0, "\(r.stderr)")
                let keys = r.stdout.split(separator: "\n").map { $0.split(separator: ":")[0].trimmingCharacters(in: .whitespaces) }
                #expect(keys == ["Name", "State", "Since", "Pid", "Enabled", "Restarts", "Last exit", "Run on", "Object"], "\(name)")
            }
        }
    }

    @Test func jsonHasThePropertiesOnlyWhenTheDaemonHasThem() async throws {
        try await Self.withDaemon { bus, _ in
            let r = try await ctl(bus, ["status", "--json", "importer", "loader", "old"])
            #expect(r.status == 0, "\(r.stderr)")
            let workers = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])
            #expect(workers.count == 3)
            #expect(workers[0]["statusText"] as? String == "cycle 3 \u{1B}[31mred\u{85}")
            #expect(workers[0]["readyAt"] as? Int == Int(Self.readyAt))
            #expect(workers[1]["statusText"] as? String == "")
            #expect(workers[1]["readyAt"] as? Int == 0)
            #expect(workers[2]["statusText"] == nil && workers[2]["readyAt"] == nil)
        }
    }

    @Test func watchShowsReadinessChanges() async throws {
        try await Self.withDaemon { bus, daemon in
            let (watch, lines) = try ctlWatch(bus)
            defer { Task { await watch.terminate() } }
            try await lines.wait("the owner line") { $0.contains(" owner :") }
            let loader = try daemon.fleet.worker("loader")
            try loader.setProperties(BgWorkerBus.workerInterface, [("StatusText", .string("connected to the database"))])
            try await lines.wait("the status text") { $0.hasSuffix(#" properties worker loader: StatusText="connected to the database""#) }
            try loader.setProperties(BgWorkerBus.workerInterface, [("State", .string("running")), ("ReadyAt", .uint64(Self.readyAt))])
            try await lines.wait("ready") { $0.hasSuffix(#" properties worker loader: State=running ReadyAt="2023-11-14 22:13:21.000""#) }
            // No control character of a worker's status reaches the terminal.
            try loader.setProperties(BgWorkerBus.workerInterface, [("StatusText", .string("cycle\u{1B}[2J4"))])
            try await lines.wait("the escaped status") { $0.hasSuffix(#" properties worker loader: StatusText=cycle\x1b[2J4"#) }
            try loader.setProperties(BgWorkerBus.workerInterface, [("ReadyAt", .uint64(0)), ("StatusText", .string(""))])
            try await lines.wait("not ready") { $0.hasSuffix(#" properties worker loader: ReadyAt="-" StatusText="""#) }
            #expect(!lines.all.joined().unicodeScalars.contains { $0.value == 0x1B })
        }
    }
}
