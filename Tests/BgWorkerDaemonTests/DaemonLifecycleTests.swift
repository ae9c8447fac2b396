import Foundation
import Glibc
import Testing
import TestSupport

/// The daemon process itself: start (READY=1, STATUS=, an invalid configuration), stop (SIGTERM,
/// SIGKILL), what survives a restart, and its bus connection going away and coming back.
@Suite(.timeLimit(.minutes(2)))
struct DaemonLifecycleTests {
    @Test func readyAndStatusAndStoppingReachSystemd() async throws {
        try await DaemonFixture.with(
            shellWorker("one", "exec sleep 1000") + shellWorker("two", "exec sleep 1000")
                + shellWorker("three", "exec sleep 1000", extra: "enabled = false")
        ) { fixture in
            let daemon = try fixture.daemon
            let ready = daemon.readyMessage
            #expect(ready.contains { $0 == ("READY", "1") })
            #expect(ready.contains { $0 == ("STATUS", "3 workers: 1 disabled, 2 running") }, "\(ready)")

            try await fixture.call("Disable", "s", ["two"])
            try await daemon.notifications.waitFor("STATUS", value: "3 workers: 2 disabled, 1 running")

            daemon.signal(SIGHUP)
            try await daemon.notifications.waitFor("RELOADING", value: "1")
            try await daemon.notifications.waitFor("READY", value: "1")

            daemon.signal(SIGTERM)
            let stopping = try await daemon.notifications.waitFor("STOPPING", value: "1")
            #expect(stopping.contains { $0.key == "STATUS" })
            let status = try await daemon.process.waitForExit()
            #expect(WaitStatus.exitCode(status) == 0)
        }
    }

    @Test func watchdogKeepAlivesGoOutWhenSystemdAsksForThem() async throws {
        try await DaemonFixture.with(execWorker("one", ["/bin/sleep", "1000"]), start: false) { fixture in
            let daemon = try await DaemonProcess(
                bus: fixture.bus, configPath: fixture.configPath, arguments: ["--runner", "process"],
                environment: ["WATCHDOG_USEC": "200000"], runtimeDirectory: fixture.directory.file("run"))
            fixture.atTeardown { await daemon.process.terminate() }
            try await daemon.notifications.waitFor("WATCHDOG", value: "1", timeout: .seconds(2))
            try await daemon.notifications.waitFor("WATCHDOG", value: "1", timeout: .seconds(2))
        }
    }

    @Test func aSecondDaemonOnTheSameBusExitsAndTouchesNothing() async throws {
        try await DaemonFixture.with(execWorker("one", ["/bin/sleep", "1000"])) { fixture in
            let before = try await fixture.worker("one")
            let second = try await run(
                [builtExecutablePath("bgworkerd"), "--config", fixture.configPath, "--bus", fixture.bus.unixAddress,
                 "--runner", "process"],
                environment: ["RUNTIME_DIRECTORY": fixture.directory.file("run-second")])
            #expect(second.status == 1)
            #expect(second.stderr.contains("owned by another process"), "\(second.stderr)")
            #expect(try await fixture.worker("one") == before)
        }
    }

    /// How fast is the bench's figure (SIGTERM -> exit); here: SIGTERM alone ends them, well before
    /// the stop timeout's SIGKILL (a wall-clock bound of 1 s failed on a loaded machine).
    @Test func sigtermStopsManyCooperativeWorkersBeforeTheirStopTimeout() async throws {
        let workers = (1...20).map { shellWorker("w\($0)", "exec sleep 1000", extra: "stop-timeout = 60") }.joined()
        try await DaemonFixture.with(workers) { fixture in
            let rows = try await fixture.listWorkers()
            #expect(rows.count == 20 && rows.allSatisfy { $0.state == "running" })
            var status: Int32 = 0
            let took = try await elapsed { status = try await fixture.stopDaemon() }
            #expect(took < .seconds(30), "stopping 20 workers took \(took)")
            #expect(WaitStatus.exitCode(status) == 0)
            for row in rows { #expect(!isAlive(Int32(row.pid)), "worker \(row.name) is gone") }
        }
    }

    /// Runs bgworkerd on the fixture's configuration until it exits (a configuration it refuses).
    private func runDaemonToItsEnd(_ fixture: DaemonFixture) async throws -> (status: Int32, stdout: String, stderr: String) {
        try await run([builtExecutablePath("bgworkerd"), "--config", fixture.configPath, "--bus",
                       fixture.bus.unixAddress, "--runner", "process"],
                      environment: ["RUNTIME_DIRECTORY": fixture.directory.file("run")])
    }

    @Test func anInvalidConfigurationAtStartExitsWithEveryError() async throws {
        try await DaemonFixture.with(
            shellWorker("good", "exec sleep 1000") + shellWorker("bad", "exec sleep 1000", extra: "exec-start = 1\nrun-on = \"sometimes\""),
            start: false) { fixture in
            let result = try await runDaemonToItsEnd(fixture)
            #expect(result.status == 1)
            #expect(result.stderr.contains("\(fixture.configPath):"), "\(result.stderr)")
            #expect(result.stderr.contains("exec-start"), "\(result.stderr)")
            #expect(result.stderr.contains("sometimes"), "\(result.stderr)")
            let owner = try await fixture.busctl(["status", DaemonFixture.busName])
            #expect(owner.status != 0, "nobody took the name")
        }
    }

    /// Issue 8: only the main file's error was reported; every file's errors come in one answer.
    @Test func anInvalidConfigurationAtStartListsTheErrorsOfEveryFile() async throws {
        let dropIns = [
            "10-a.toml": "[worker.a]\nexec = [\"/bin/true\"]\nrun-on = \"sometimes\"\n",
            "20-b.toml": "[worker.b\n",
        ]
        try await DaemonFixture.with(
            shellWorker("good", "exec sleep 1000", extra: "exec-start = 1"), dropIns: dropIns, start: false) { fixture in
            let result = try await runDaemonToItsEnd(fixture)
            #expect(result.status == 1)
            #expect(result.stderr.contains("\(fixture.configPath):"), "\(result.stderr)")
            #expect(result.stderr.contains("exec-start"), "\(result.stderr)")
            #expect(result.stderr.contains(fixture.directory.file("workers.d/10-a.toml") + ":3: [worker.a]"), "\(result.stderr)")
            #expect(result.stderr.contains(fixture.directory.file("workers.d/20-b.toml") + ":1: "), "\(result.stderr)")
        }
    }

    /// Issue 8: a deeply nested file overflowed the stack at start (exit 139).
    @Test func aDeeplyNestedConfigurationAtStartIsAnErrorNotACrash() async throws {
        let nested = "environment = " + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        try await DaemonFixture.with(shellWorker("deep", "exec sleep 1000", extra: nested), start: false) { fixture in
            let result = try await runDaemonToItsEnd(fixture)
            #expect(result.status == 1, "\(result.stderr)")
            #expect(result.stderr.contains("\(fixture.configPath):"), "\(result.stderr)")
            #expect(result.stderr.contains("more than 128 levels"), "\(result.stderr)")
        }
    }

    @Test func sigkillOfTheDaemonLeavesNoWorkerBehind() async throws {
        let directory = try TemporaryDirectory(prefix: "bgw-kill")
        defer { directory.remove() }
        let fifo = try Fifo(directory.file("child"))
        let script = "sleep 1000 & echo $! > \(fifo.path); wait"
        try await DaemonFixture.with(shellWorker("parent", script)) { fixture in
            let worker = try await fixture.worker("parent")
            let grandchild = try #require(Int32(try await fifo.readLine()))

            try await fixture.stopDaemon(signal: SIGKILL)
            try await waitUntilGone(Int32(worker.pid))  // the worker dies with the daemon

            // A new daemon kills what the old one's workers left (the grandchild) before it starts
            // anything, and then runs exactly one copy of the worker.
            try await fixture.startDaemon()
            #expect(!isAlive(grandchild), "a new daemon never finds an old copy still running")
            let again = try await fixture.worker("parent")
            #expect(again.state == "running" && again.pid != worker.pid)
            let newGrandchild = try #require(Int32(try await fifo.readLine()))
            #expect(newGrandchild != grandchild && isAlive(newGrandchild))
        }
    }

    @Test func enableStateSurvivesADaemonRestart() async throws {
        try await DaemonFixture.with(
            shellWorker("on", "exec sleep 1000") + shellWorker("off", "exec sleep 1000", extra: "enabled = false")) { fixture in
            try await fixture.call("Disable", "s", ["on"])
            try await fixture.call("Enable", "s", ["off"])
            let saved = try String(contentsOfFile: fixture.stateDirectory + "/enable-state", encoding: .utf8)
            #expect(saved.contains("disabled on configured=true") && saved.contains("enabled off configured=false"), "\(saved)")
            try await fixture.stopDaemon()

            try await fixture.startDaemon()
            let workers = try await fixture.listWorkers()
            #expect(workers.map { "\($0.name) \($0.state) \($0.enabled)" } == ["off running true", "on disabled false"])
        }
    }

    /// A corrupt file is logged, the configuration applies, and the file is kept aside: the next
    /// Disable writes a new file and the old content is still there to restore by hand.
    @Test func aCorruptStateFileIsLoggedIgnoredAndKeptAside() async throws {
        try await DaemonFixture.with(shellWorker("on", "exec sleep 1000"), start: false) { fixture in
            try FileManager.default.createDirectory(atPath: fixture.stateDirectory, withIntermediateDirectories: true)
            try "garbage\n".write(toFile: fixture.stateDirectory + "/enable-state", atomically: true, encoding: .utf8)
            let daemon = try await fixture.startDaemon()
            #expect(try await fixture.worker("on").state == "running")
            #expect(daemon.log.contains("state file") && daemon.log.contains("enable-state.broken-"), "\(daemon.log)")

            try await fixture.call("Disable", "s", ["on"])
            let files = try FileManager.default.contentsOfDirectory(atPath: fixture.stateDirectory).sorted()
            let aside = try #require(files.first { $0.hasPrefix("enable-state.broken-") }, "\(files)")
            #expect(try String(contentsOfFile: fixture.stateDirectory + "/" + aside, encoding: .utf8) == "garbage\n")
            let saved = try String(contentsOfFile: fixture.stateDirectory + "/enable-state", encoding: .utf8)
            #expect(saved.contains("disabled on configured=true"), "\(saved)")
        }
    }

    /// A state file of a gigabyte (sparse) is refused unread: the daemon starts and runs its workers.
    @Test func anOversizedStateFileIsRefusedAndTheDaemonStarts() async throws {
        try await DaemonFixture.with(shellWorker("on", "exec sleep 1000"), start: false) { fixture in
            try FileManager.default.createDirectory(atPath: fixture.stateDirectory, withIntermediateDirectories: true)
            let path = fixture.stateDirectory + "/enable-state"
            try "bgworker-enable-state 1\ndisabled on configured=true\n".write(toFile: path, atomically: true, encoding: .utf8)
            #expect(truncate(path, 1 << 30) == 0)
            let daemon = try await fixture.startDaemon()
            #expect(try await fixture.worker("on").state == "running")
            #expect(daemon.log.contains("1073741824 bytes, over the 16 MiB"), "\(daemon.log)")
            #expect(!FileManager.default.fileExists(atPath: path))
        }
    }

    /// A FIFO at the state file's path: opened for reading without O_NONBLOCK it blocked the
    /// start for ever, SIGTERM pending and blocked (seen before the fix). Now ignored and left.
    @Test func aFifoAtTheStateFilePathDoesNotBlockTheStart() async throws {
        try await DaemonFixture.with(shellWorker("on", "exec sleep 1000"), start: false) { fixture in
            try FileManager.default.createDirectory(atPath: fixture.stateDirectory, withIntermediateDirectories: true)
            let path = fixture.stateDirectory + "/enable-state"
            #expect(mkfifo(path, 0o600) == 0)
            let daemon = try await fixture.startDaemon()
            #expect(try await fixture.worker("on").state == "running")
            #expect(daemon.log.contains("not a regular file but a fifo"), "\(daemon.log)")
        }
    }

    @Test func theDaemonReconnectsWhenItsBusRestartsAndWorkersNeverStop() async throws {
        try await DaemonFixture.with(shellWorker("steady", "exec sleep 1000", extra: #"run-on = "any""#)) { fixture in
            let before = try await fixture.worker("steady")

            await fixture.bus.kill()
            let newBus = try await PrivateBus(socketPath: fixture.bus.socketPath, directory: fixture.directory)
            fixture.atTeardown { await newBus.kill() }
            // Watch the name before reading its owner, so that the daemon's return is not missed.
            let monitor = try await BusMonitor(address: newBus.unixAddress, matches: [
                "type='signal',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='\(DaemonFixture.busName)'",
            ])
            let owner = try await fixture.busctl(["status", DaemonFixture.busName])
            if owner.status != 0 {
                _ = try await monitor.waitFor("the daemon owning its name again", timeout: .seconds(10)) { message in
                    message.member == "NameOwnerChanged" && message.body.count == 3 && message.body[2].string?.isEmpty == false
                }
            }
            let after = try await fixture.worker("steady")
            #expect(after == before, "the worker never stopped: \(before) then \(after)")
            #expect(isAlive(Int32(before.pid)))
            // And the daemon is fully back: a change works and its signals reach the new bus.
            let daemon = try await fixture.daemonUniqueName()
            let watcher = try await fixture.monitor()
            try await fixture.call("Restart", "s", ["steady"])
            let restarted = try await watcher.changes(untilReplyTo: "Restart", daemon: daemon)
            #expect(restarted.changes.map(\.state) == ["stopping", "starting", "running"])
        }
    }
}

/// The daemon with an HA source when its own bus connection goes away and comes back.
@Suite(.timeLimit(.minutes(2)))
struct DaemonBusLossWithHATests {
    @Test func theRoleIsUnknownWhileTheBusIsGoneAndIsReadAgainAfterReconnecting() async throws {
        try await DaemonFixture.with(
            execWorker("main", ["/bin/sleep", "1000"], extra: #"run-on = "primary""#)
                + execWorker("always", ["/bin/sleep", "1000"], extra: #"run-on = "any""#),
            daemonSettings: "\n[ha]\nsource = \"dbus\"\non-lost = \"stop\"", start: false) { fixture in
            let manager = try await startHASimulator(on: fixture.bus, role: "primary")
            fixture.atTeardown { await manager.terminate(grace: .seconds(2)) }
            let monitor = try await fixture.monitor()
            try await fixture.startDaemon()
            let main = try await monitor.waitUntil(fixture, worker: "main", is: "running")
            let always = try await fixture.worker("always")
            #expect(try await fixture.property("HARole").string == "primary")

            await fixture.bus.kill()
            // Role unknown under on-lost = stop: the primary worker stops, the `any` one runs on.
            try await waitUntilGone(Int32(main.pid))
            #expect(isAlive(Int32(always.pid)))

            let newBus = try await PrivateBus(socketPath: fixture.bus.socketPath, directory: fixture.directory)
            fixture.atTeardown { await newBus.kill() }
            let names = try await BusMonitor(address: newBus.unixAddress, matches: [
                "type='signal',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='\(DaemonFixture.busName)'",
            ])
            fixture.atTeardown { await names.stop() }
            if try await fixture.busctl(["status", DaemonFixture.busName]).status != 0 {
                _ = try await names.waitFor("the daemon owning its name again") { message in
                    message.body.count == 3 && message.body[2].string?.isEmpty == false
                }
            }
            #expect(try await fixture.property("HARole").string == "unknown")
            #expect(try await fixture.worker("main").state == "standby")
            #expect(try await fixture.worker("always") == always, "the any worker never stopped")

            // An HA manager on the new bus is followed: the source was restarted on the new connection.
            let watcher = try await fixture.monitor()
            let newManager = try await startHASimulator(on: newBus, role: "primary")
            fixture.atTeardown { await newManager.terminate(grace: .seconds(2)) }
            _ = try await watcher.waitUntil(fixture, worker: "main", is: "running")
            #expect(try await fixture.property("HARole").string == "primary")
        }
    }

    /// `bgworker-ha-sim` owning org.example.HAManager with `role`, once it says it is ready.
    private func startHASimulator(on bus: PrivateBus, role: String) async throws -> ChildProcess {
        let process = try ChildProcess(
            [builtExecutablePath("bgworker-ha-sim"), "--bus", bus.unixAddress, "--role", role], captureStdout: true)
        let line = try await process.readLine(until: { $0.hasPrefix("ready") })
        #expect(line.hasPrefix("ready"))
        return process
    }
}
