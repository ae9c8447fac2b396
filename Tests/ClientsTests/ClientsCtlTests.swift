import BgWorkerAPI
import DBus
import Foundation
import Glibc
import Testing
import TestSupport

/// bgworkerctl as a real process against our stand-in for bgworkerd on a real bus: the exact
/// output of every command, its exit status, its JSON (parsed by Foundation and by python).
@Suite("bgworkerctl against a stand-in")
struct ClientsCtlTests {
    static let seeds = [
        WorkerSeed(name: "dice", state: "running", enabled: true, pid: 4242, restarts: 3, lastExit: "exited 1", runOn: "primary"),
        WorkerSeed(name: "db-sync", state: "disabled", enabled: false, runOn: "any"),
        WorkerSeed(name: "report", state: "failed", enabled: true, restarts: 5, lastExit: "killed SIGSEGV", runOn: "secondary",
                   stateChangedAt: 1_700_000_100_000_000),
    ]

    /// A bus with the stand-in on it, for one test.
    static func withDaemon(_ body: (PrivateBus, StandInDaemon) async throws -> Void) async throws {
        try await withBus { bus in
            let daemon = try await StandInDaemon.start(on: bus, workers: seeds)
            defer { daemon.detach() }
            try await body(bus, daemon)
        }
    }

    static func parseJSON(_ text: String) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(text.utf8))
    }

    @Test func statusShowsTheDaemonAndATableOfWorkers() async throws {
        try await Self.withDaemon { bus, _ in
            let r = try await ctl(bus, ["status"])
            #expect(r.status == 0, "\(r.stderr)")
            #expect(r.stderr.isEmpty)
            #expect(r.stdout == """
                  Version: 0.0-stand-in
                   Runner: process
                  HA role: standalone
                Log level: info

                NAME     STATE     PID   ENABLED  RESTARTS  LAST-EXIT       RUN-ON     SINCE
                db-sync  disabled  -     no       0         -               any        2023-11-14 22:13:20
                dice     running   4242  yes      3         exited 1        primary    2023-11-14 22:13:20
                report   failed    -     yes      5         killed SIGSEGV  secondary  2023-11-14 22:15:00
                """)
            // No command at all is `status`.
            #expect(try await ctl(bus, []).stdout == r.stdout)
        }
    }

    @Test func statusJSON() async throws {
        try await Self.withDaemon { bus, _ in
            let r = try await ctl(bus, ["status", "--json"])
            #expect(r.status == 0)
            let top = try #require(try Self.parseJSON(r.stdout) as? [String: Any])
            #expect(top["version"] as? String == "0.0-stand-in")
            #expect(top["haRole"] as? String == "standalone")
            #expect(top["runner"] as? String == "process")
            #expect(top["logLevel"] as? String == "info")
            let workers = try #require(top["workers"] as? [[String: Any]])
            #expect(workers.map { $0["name"] as? String } == ["db-sync", "dice", "report"])
            let dice = workers[1]
            #expect(dice["state"] as? String == "running")
            #expect(dice["enabled"] as? Bool == true)
            #expect(dice["pid"] as? Int == 4242)
            #expect(dice["restarts"] as? Int == 3)
            #expect(dice["lastExit"] as? String == "exited 1")
            #expect(dice["runOn"] as? String == "primary")
            #expect(dice["stateChangedAt"] as? Int == 1_700_000_000_000_000)
            #expect(workers[0]["path"] as? String == BgWorkerBus.workerPathPrefix + "db_2dsync")
            // Another parser that no one here wrote agrees.
            let python = try await run(["/bin/sh", "-c", "printf '%s' \"$0\" | /usr/bin/python3 -m json.tool > /dev/null", r.stdout])
            #expect(python.status == 0, "\(python.stderr)")
        }
    }

    @Test func statusOfOneWorker() async throws {
        try await Self.withDaemon { bus, _ in
            let r = try await ctl(bus, ["status", "db-sync"])
            #expect(r.status == 0)
            #expect(r.stdout == """
                     Name: db-sync
                    State: disabled
                    Since: 2023-11-14 22:13:20
                      Pid: -
                  Enabled: no
                 Restarts: 0
                Last exit: -
                   Run on: any
                   Object: \(BgWorkerBus.workerPathPrefix)db_2dsync
                """)
            let json = try await ctl(bus, ["status", "report", "--json"])
            let report = try #require(try Self.parseJSON(json.stdout) as? [String: Any])
            #expect(report["name"] as? String == "report")
            #expect(report["lastExit"] as? String == "killed SIGSEGV")
            #expect(report["stateChangedAt"] as? Int == 1_700_000_100_000_000)
        }
    }

    @Test func anUnknownWorkerExitsWithFourAndTheErrorOnStandardError() async throws {
        try await Self.withDaemon { bus, _ in
            for command in [["status", "nope"], ["enable", "nope"], ["disable", "nope"], ["restart", "nope"], ["--json", "status", "nope"]] {
                let r = try await ctl(bus, command)
                #expect(r.status == 4, "\(command)")
                #expect(r.stdout.isEmpty)
                #expect(r.stderr == "bgworkerctl: no worker named 'nope' (\(BgWorkerBus.ErrorName.noSuchWorker))", "\(command)")
            }
        }
    }

    @Test func listTextAndJSON() async throws {
        try await Self.withDaemon { bus, _ in
            let r = try await ctl(bus, ["list"])
            #expect(r.status == 0)
            #expect(r.stdout == """
                NAME     STATE     PID   ENABLED
                db-sync  disabled  -     no
                dice     running   4242  yes
                report   failed    -     yes
                """)
            let json = try await ctl(bus, ["list", "--json"])
            let rows = try #require(try Self.parseJSON(json.stdout) as? [[String: Any]])
            #expect(rows.count == 3)
            #expect(rows[1]["name"] as? String == "dice")
            #expect(rows[1]["pid"] as? Int == 4242)
            #expect(rows[1]["path"] as? String == BgWorkerBus.workerPathPrefix + "dice")
            #expect(Set(rows[0].keys) == ["name", "state", "enabled", "pid", "path"])
        }
    }

    @Test func enableDisableRestart() async throws {
        try await Self.withDaemon { bus, _ in
            var r = try await ctl(bus, ["enable", "db-sync"])
            #expect(r.status == 0 && r.stdout.isEmpty && r.stderr.isEmpty, "\(r)")
            #expect(try await ctl(bus, ["status", "db-sync", "--json"]).stdout.contains(#""state":"running""#))

            r = try await ctl(bus, ["--json", "disable", "db-sync"])
            #expect(r.status == 0)
            let after = try #require((try Self.parseJSON(r.stdout) as? [[String: Any]])?.first)
            #expect(after["state"] as? String == "disabled")
            #expect(after["enabled"] as? Bool == false)

            r = try await ctl(bus, ["restart", "db-sync"])
            #expect(r.status == 1)
            #expect(r.stderr == "bgworkerctl: worker 'db-sync' is disabled (\(BgWorkerBus.ErrorName.disabled))")

            r = try await ctl(bus, ["restart", "dice", "--json"])
            #expect(r.status == 0)
            let restarted = try #require((try Self.parseJSON(r.stdout) as? [[String: Any]])?.first)
            #expect(restarted["pid"] as? Int == 4343)
            #expect(restarted["restarts"] as? Int == 0)
        }
    }

    @Test func reload() async throws {
        try await Self.withDaemon { bus, daemon in
            var r = try await ctl(bus, ["reload"])
            #expect(r.status == 0 && r.stdout.isEmpty && r.stderr.isEmpty)
            r = try await ctl(bus, ["reload", "--json"])
            #expect((try Self.parseJSON(r.stdout) as? [Any])?.count == 3)

            daemon.fleet.reloadFailure.withLock { $0 = "/etc/bgworker/bgworkerd.toml:3: unknown key 'exex' in [worker.dice]" }
            r = try await ctl(bus, ["reload"])
            #expect(r.status == 1)
            #expect(r.stdout.isEmpty)
            #expect(r.stderr == "bgworkerctl: /etc/bgworker/bgworkerd.toml:3: unknown key 'exex' in [worker.dice] (\(BgWorkerBus.ErrorName.invalidConfig))")
        }
    }

    @Test func logLevelReadAndSet() async throws {
        try await Self.withDaemon { bus, daemon in
            #expect(try await ctl(bus, ["log-level"]).stdout == "info")
            var r = try await ctl(bus, ["log-level", "debug"])
            #expect(r.status == 0 && r.stdout.isEmpty)
            #expect(daemon.manager.property(BgWorkerBus.managerInterface, "LogLevel") == .string("debug"))
            #expect(try await ctl(bus, ["log-level", "--json"]).stdout == #"{"logLevel":"debug"}"#)
            #expect(try await ctl(bus, ["--json", "log-level", "warning"]).stdout == #"{"logLevel":"warning"}"#)

            r = try await ctl(bus, ["log-level", "loud"])
            #expect(r.status == 1)
            #expect(r.stderr.hasSuffix("(org.freedesktop.DBus.Error.InvalidArgs)"))
            #expect(daemon.manager.property(BgWorkerBus.managerInterface, "LogLevel") == .string("warning"))
        }
    }

    @Test func haRole() async throws {
        try await Self.withDaemon { bus, daemon in
            #expect(try await ctl(bus, ["ha"]).stdout == "standalone")
            try daemon.setHARole("primary")
            #expect(try await ctl(bus, ["ha", "--json"]).stdout == #"{"haRole":"primary"}"#)
        }
    }

    @Test func optionsBeforeOrAfterTheCommandAndTheBusFromTheEnvironment() async throws {
        try await Self.withDaemon { bus, _ in
            let expected = try await ctl(bus, ["list", "--json"]).stdout
            let binary = builtExecutablePath("bgworkerctl")
            for argv in [[binary, "--json", "list", "--bus", bus.address], [binary, "--bus", bus.address, "--json", "list"],
                         [binary, "list", "--bus", bus.socketPath, "--json"], [binary, "--bus=\(bus.address)", "list", "--json"]] {
                let r = try await run(argv)
                #expect(r.status == 0, "\(argv): \(r.stderr)")
                #expect(r.stdout == expected, "\(argv)")
            }
            let fromEnvironment = try await run([binary, "list", "--json"], environment: ["BGWORKER_BUS": bus.address])
            #expect(fromEnvironment.stdout == expected)
            // --bus wins over the environment.
            let both = try await run([binary, "list", "--json", "--bus", bus.socketPath], environment: ["BGWORKER_BUS": "/nonexistent"])
            #expect(both.stdout == expected)
        }
    }

    @Test func failuresExitWithOne() async throws {
        try await withBus { bus in
            // No daemon on the bus.
            var r = try await ctl(bus, ["status"])
            #expect(r.status == 1)
            #expect(r.stderr == "bgworkerctl: bgworkerd is not running on this bus (\(bus.address))", "\(r.stderr)")
            // No bus.
            r = try await run([builtExecutablePath("bgworkerctl"), "--bus", "/nonexistent/bus.sock", "list"])
            #expect(r.status == 1)
            #expect(r.stderr.hasPrefix("bgworkerctl: cannot connect to the /nonexistent/bus.sock bus"), "\(r.stderr)")
            r = try await run([builtExecutablePath("bgworkerctl"), "list"], environment: ["BGWORKER_BUS": "nonsense"])
            #expect(r.status == 1)
            #expect(r.stderr.contains("BGWORKER_BUS=nonsense"))
            // Usage errors (an unknown command is not taken for a worker's name).
            for argv in [["frobnicate"], ["enable"], ["logs", "a", "b"], ["list", "--bus", "nonsense"]] {
                r = try await run([builtExecutablePath("bgworkerctl"), "--bus", bus.address] + argv)
                #expect(r.status == 1, "\(argv)")
                #expect(r.stderr.hasPrefix("Error: "), "\(argv): \(r.stderr)")
                #expect(r.stdout.isEmpty)
            }
            r = try await run([builtExecutablePath("bgworkerctl"), "--help"])
            #expect(r.status == 0)
            #expect(r.stdout.contains("USAGE: bgworkerctl"))
        }
    }

    @Test func watchPrintsEachSignalOfTheOwnerAsItComes() async throws {
        try await Self.withDaemon { bus, daemon in
            let (watch, lines) = try ctlWatch(bus)
            defer { Task { await watch.terminate() } }
            let owner = try #require(daemon.connection?.uniqueName)
            try await lines.wait("the owner line") { $0.hasSuffix(" owner \(owner)") }

            // A forged WorkerStateChanged from another connection is not shown.
            let forger = try await DBusConnection.connect(.address(bus.address))
            try forger.emitSignal(path: StandInDaemon.managerPath, interface: BgWorkerBus.managerInterface, member: "WorkerStateChanged",
                                  arguments: [.string("dice"), .string("failed"), .uint32(1), .string("forged")])
            _ = try await forger.nameOwner(BgWorkerBus.busName)  // the forged signal has reached the bus
            forger.close()

            try daemon.transition("dice", to: "backoff", pid: 0, reason: "exited with status 3")
            try await lines.wait("the state change") { $0.hasSuffix(" worker dice: backoff (exited with status 3)") }
            try await lines.wait("its properties") { $0.contains(" properties worker dice: State=backoff Pid=0 StateChangedAt=") }
            try daemon.transition("db-sync", to: "running", pid: 77, reason: "enabled")
            try await lines.wait("a pid") { $0.hasSuffix(" worker db-sync: running, pid 77 (enabled)") }
            try daemon.setHARole("secondary")
            try await lines.wait("the role") { $0.hasSuffix(" ha-role secondary") }
            try await lines.wait("the role property") { $0.hasSuffix(" properties manager: HARole=secondary") }
            try daemon.setLogLevel("debug")
            try await lines.wait("the log level") { $0.hasSuffix(" properties manager: LogLevel=debug") }
            #expect(!lines.all.contains { $0.contains("forged") || $0.contains("failed") })
            // Every line starts with a local timestamp.
            #expect(lines.all.allSatisfy { $0.range(of: #"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} "#, options: .regularExpression) != nil })

            daemon.detach()
            try await lines.wait("the owner gone") { $0.hasSuffix(" owner none") }
            await bus.kill()
            #expect(WaitStatus.exitCode(try await watch.waitForExit()) == 1)
        }
    }

    @Test func watchJSONLines() async throws {
        try await Self.withDaemon { bus, daemon in
            let watch = try ChildProcess([builtExecutablePath("bgworkerctl"), "--json", "--bus", bus.address, "watch"],
                                         captureStdout: true, captureStderr: true)
            defer { Task { await watch.terminate() } }
            let lines = OutputLines(of: watch)
            try await lines.wait("the owner line") { $0.contains(#""event":"NameOwner""#) }
            try daemon.transition("dice", to: "stopping", pid: 4242, reason: "disabled")
            try daemon.setHARole("primary")
            try await lines.wait("the role") { $0.contains(#""event":"HARoleChanged""#) }
            let objects = try lines.all.map { try #require(try Self.parseJSON($0) as? [String: Any]) }
            #expect(objects.allSatisfy { ($0["time"] as? String)?.hasSuffix("Z") == true })
            let owner = try #require(objects.first)
            #expect(owner["owner"] as? String == daemon.connection?.uniqueName)
            let state = try #require(objects.first { $0["event"] as? String == "WorkerStateChanged" })
            #expect(state["name"] as? String == "dice")
            #expect(state["state"] as? String == "stopping")
            #expect(state["pid"] as? Int == 4242)
            #expect(state["reason"] as? String == "disabled")
            let properties = try #require(objects.first { $0["event"] as? String == "PropertiesChanged" && $0["worker"] as? String == "dice" })
            #expect(properties["path"] as? String == BgWorkerBus.workerPathPrefix + "dice")
            #expect(properties["interface"] as? String == BgWorkerBus.workerInterface)
            let changed = try #require(properties["changed"] as? [String: Any])
            #expect(changed["State"] as? String == "stopping")
            #expect(changed["StateChangedAt"] as? Int != nil)
            #expect(properties["invalidated"] as? [Any] != nil)
            let role = try #require(objects.first { $0["event"] as? String == "HARoleChanged" })
            #expect(role["role"] as? String == "primary")
        }
    }
}

/// `bgworkerctl watch` on `bus`, in UTC, its lines read as they come.
func ctlWatch(_ bus: PrivateBus) throws -> (process: ChildProcess, lines: OutputLines) {
    let watch = try ChildProcess([builtExecutablePath("bgworkerctl"), "watch", "--bus", bus.address], extraEnvironment: ["TZ": "UTC"],
                                 captureStdout: true, captureStderr: true)
    return (watch, OutputLines(of: watch))
}

/// Runs bgworkerctl on `bus` (with --bus after the arguments, in UTC so times are fixed).
func ctl(_ bus: PrivateBus, _ arguments: [String]) async throws -> (status: Int32, stdout: String, stderr: String) {
    try await run([builtExecutablePath("bgworkerctl")] + arguments + ["--bus", bus.address], environment: ["TZ": "UTC"])
}
