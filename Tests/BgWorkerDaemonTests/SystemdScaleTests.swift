import BgWorkerCore
import DBus
import Foundation
import Glibc
import Synchronization
import TestSupport
import Testing

@testable import BgWorkerDaemon

extension SystemdNamespaceTests {
    /// Issue 16: the runner at scale, on the namespace's stock system bus (Debian's
    /// `max_match_rules_per_connection` of 512, not raised).
    @Suite("SystemdRunner: many workers", .timeLimit(.minutes(5)))
    struct SystemdScaleTests {
        /// The match rules dbus-daemon holds for the connection (`Debug.Stats`, which Debian's
        /// dbus-daemon has and its system.conf lets root use).
        static func matchRules(of connection: DBusConnection, on bus: DBusConnection) async throws -> UInt32 {
            let name = try #require(connection.uniqueName)
            let reply = try await bus.call(destination: "org.freedesktop.DBus", path: try ObjectPath("/org/freedesktop/DBus"),
                                           interface: "org.freedesktop.DBus.Debug.Stats", member: "GetConnectionStats",
                                           arguments: [.string(name)])
            let stats = try #require(reply.first?.stringKeyedDictionary, "GetConnectionStats answered \(reply)")
            return try #require(stats["MatchRules"]?.unwrappingVariant.uint32Value, "no MatchRules in \(stats)")
        }

        /// Starts `names` one after the other (the runner carries starts out in order anyway).
        static func startAll(_ names: some Sequence<String>, on runner: SystemdRunner) async throws -> [String: Int32] {
            var pids: [String: Int32] = [:]
            for name in names {
                pids[name] = try await runner.start(SystemdRunnerTests.spec(name, ["/bin/sleep", "600"]))
            }
            return pids
        }

        /// Before the fix the runner added rules per unit: at about 250 units the bus refused more
        /// (LimitsExceeded), starts failed, and a new runner lost adopted units.
        @Test(.enabled(if: rootTestsEnabled, SystemdRunnerTests.needsRoot))
        func matchRulesStayConstantAndThreeHundredWorkersRunAndAreAdopted() async throws {
            try await SystemdNamespace.with { ns in
                let observer = try await DBusConnection.connect(.address(ns.busAddress))
                defer { observer.close() }
                let first = try await DBusConnection.connect(.address(ns.busAddress))
                let runner = SystemdRunner(connection: first)
                let names = (0..<300).map { String(format: "w-%03d", $0) }
                var pids = try await Self.startAll(names[0..<10], on: runner)
                let withTen = try await Self.matchRules(of: first, on: observer)
                let began = ContinuousClock.now
                pids.merge(try await Self.startAll(names[10...], on: runner)) { a, _ in a }
                print("systemd runner: 290 more starts took \(ContinuousClock.now - began)")
                let withThreeHundred = try await Self.matchRules(of: first, on: observer)
                print("systemd runner: match rules with 10 workers: \(withTen), with 300: \(withThreeHundred)")
                #expect(withTen == withThreeHundred)
                #expect(withThreeHundred < 10)
                #expect(pids.count == 300)
                let active = try await ns.run(inside: ["systemctl", "list-units", "--state=active", "--plain", "--no-legend", "bgworker-*.service"])
                #expect(active.stdout.split(separator: "\n").count == 300, "every unit is active")

                // The daemon dies (its connection ends, nothing is stopped); a new one adopts all 300.
                first.close()
                let second = try await DBusConnection.connect(.address(ns.busAddress))
                defer { second.close() }
                let next = SystemdRunner(connection: second)
                let adoptBegan = ContinuousClock.now
                let adopted = await next.adopt(names.map { SystemdRunnerTests.spec($0, ["/bin/sleep", "600"]) })
                print("systemd runner: adopting 300 units took \(ContinuousClock.now - adoptBegan)")
                #expect(adopted == pids, "every worker adopted with its MainPID")
                #expect(try await Self.matchRules(of: second, on: observer) == withTen)

                // Still followed: an exit is reported.
                let victim = try #require(pids["w-299"])
                _ = try await ns.run(inside: ["kill", "-KILL", "\(victim)"])
                let event = try await waitFor("the exit of w-299", in: next.events, timeout: .seconds(20)) {
                    if case .exited("w-299", _, _) = $0 { true } else { false }
                }
                #expect(event == .exited(name: "w-299", pid: victim, status: .killed(SIGKILL)))
                await next.shutdown()
                #expect(try await ns.run(inside: ["systemctl", "list-units", "--all", "--plain", "--no-legend", "bgworker-*.service"]).stdout
                    .trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
            }
        }

        /// Issue 16: a new daemon adopts before it requests its name. Before, a client that saw the
        /// name read every adopted worker `standby` with pid 0 for 150-350 ms while its unit ran.
        @Test(.enabled(if: rootTestsEnabled, SystemdRunnerTests.needsRoot))
        func aClientThatSeesTheNameSeesEveryAdoptedWorkerRunningWithItsPid() async throws {
            try await coldStartKillAndAdopt(count: 30)
        }

        /// The issue's scale test: 2,000 workers as units, SIGKILL, a new daemon adopts all.
        @Test(.enabled(if: rootTestsEnabled, SystemdRunnerTests.needsRoot))
        func twoThousandWorkersAreAdoptedWithTheirPids() async throws {
            try await coldStartKillAndAdopt(count: 2_000)
        }

        /// Starts `count` workers as units, SIGKILLs the daemon, starts a new one while a client
        /// waits for the name and reads every worker from the moment it appears until READY=1:
        /// every read must show every worker `running` with the pid it had.
        func coldStartKillAndAdopt(count: Int) async throws {
            let workers = (0..<count).map { "[worker.w\($0)]\nexec = [\"/bin/sleep\", \"3600\"]\n" }.joined(separator: "\n")
            try await SystemdDaemonFixture.with(workers) { f in
                var began = ContinuousClock.now
                try await f.startDaemon()
                print("bgworkerd + systemd runner: cold start of \(count) workers took \(ContinuousClock.now - began)")
                let before = try await f.workers()
                #expect(before.count == count && before.values.allSatisfy { $0.state == "running" })
                try await f.stopDaemon(signal: SIGKILL)

                let client = try await DBusConnection.connect(.address(f.bus.unixAddress))
                defer { client.close() }
                let watch = try await client.watchNameOwner(DaemonFixture.busName)
                #expect(watch.initialOwner == nil)
                let ready = Flag()
                let reads = Task { () async throws -> [[String: WorkerRow]] in
                    var reads: [[String: WorkerRow]] = []
                    for await event in watch {
                        guard case .ownerChanged(_, _?) = event else { continue }
                        // Reads until one began after READY=1 (the first read of 2,000 rows may take longer
                        // than the daemon needs from its name to READY=1).
                        var last = false
                        repeat {
                            last = ready.isSet
                            reads.append(try await listWorkers(client))
                        } while !last
                        return reads
                    }
                    throw TestProcessError("the name watch ended")
                }
                began = ContinuousClock.now
                try await f.startDaemon()
                print("bgworkerd + systemd runner: restart adopting \(count) workers -> READY=1 took \(ContinuousClock.now - began)")
                ready.set()
                let seen = try await reads.value
                print("bgworkerd + systemd runner: the client read \(count) workers \(seen.count) times from the name to READY=1")
                #expect(!seen.isEmpty)
                for (index, read) in seen.enumerated() {
                    let wrong = before.filter { name, worker in read[name] != WorkerRow(state: "running", pid: worker.pid) }
                    #expect(wrong.isEmpty, "read \(index) of \(seen.count): \(wrong.count) workers not running with their pid, e.g. \(wrong.keys.sorted().prefix(3).map { "\($0): \(String(describing: read[$0]))" })")
                }
                #expect(try await f.unitProperty("w0", "Service", "MainPID") == "u \(before["w0"]?.pid ?? 0)")
            }
        }

        func listWorkers(_ client: DBusConnection) async throws -> [String: WorkerRow] {
            let reply = try await client.call(destination: DaemonFixture.busName, path: try ObjectPath(DaemonFixture.manager),
                                              interface: DaemonFixture.interface, member: "ListWorkers")
            var rows: [String: WorkerRow] = [:]
            for row in reply.first?.arrayValue ?? [] {
                guard let f = row.structureValue, f.count == 5, let name = f[0].stringValue,
                      let state = f[1].stringValue, let pid = f[3].uint32Value
                else { throw TestProcessError("bad ListWorkers row \(row)") }
                rows[name] = WorkerRow(state: state, pid: pid)
            }
            return rows
        }

        /// A `failed` worker starts again after a daemon restart, with `Restarts` 0 (as with the
        /// process runner, `DaemonRestartFailedTests`).
        @Test(.enabled(if: rootTestsEnabled, SystemdRunnerTests.needsRoot))
        func aFailedWorkerRunsAgainAfterADaemonRestartWithRestartsZero() async throws {
            try await SystemdDaemonFixture.with("") { f in
                let marker = "\(f.directory)/fail"
                FileManager.default.createFile(atPath: marker, contents: nil)
                try f.writeConfiguration("""
                    [worker.flaky]
                    exec = ["/bin/sh", "-c", "test -e \(marker) && exit 3; exec sleep 300"]
                    restart-delay = 0.05
                    start-limit-burst = 2
                    start-limit-interval = 60
                    """)
                let monitor = try await f.monitor()
                defer { Task { await monitor.stop() } }
                try await f.startDaemon()
                if try await f.workers()["flaky"]?.state != "failed" {
                    _ = try await monitor.stateChange(of: "flaky", to: "failed", timeout: .seconds(20))
                }
                #expect(try await restarts(f) != "u 0")
                #expect(try await f.units().isEmpty, "a failed worker has no unit")

                try await f.stopDaemon()
                try FileManager.default.removeItem(atPath: marker)
                try await f.startDaemon()
                let row = try #require(try await f.workers()["flaky"])
                #expect(row.state == "running")
                #expect(try await f.unitProperty("flaky", "Service", "MainPID") == "u \(row.pid)")
                #expect(try await restarts(f) == "u 0")
            }
        }

        func restarts(_ f: SystemdDaemonFixture) async throws -> String {
            try await run(["busctl", "--address=\(f.bus.unixAddress)", "get-property", DaemonFixture.busName,
                           "\(DaemonFixture.manager)/worker/flaky", "\(DaemonFixture.interface).Worker", "Restarts"])
                .stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }

        final class Flag: Sendable {
            private let value = Mutex(false)
            var isSet: Bool { value.withLock { $0 } }
            func set() { value.withLock { $0 = true } }
        }

        struct WorkerRow: Sendable, Equatable {
            var state: String
            var pid: UInt32
        }
    }
}
