import BgWorkerAPI
import Foundation
import Glibc
import Testing
import TestSupport

@testable import BgWorkerDaemon

/// The emergency stop (`Stop`/`Start`, state `stopped`) and per-worker log levels, against the
/// real daemon (process runner) through busctl, gdbus, dbus-send and python3-dbus.
@Suite(.timeLimit(.minutes(2)))
struct DaemonStopTests {
    static let workerInterface = BgWorkerBus.workerInterface
    static let workers = shellWorker("dice", "exec sleep 1000") + shellWorker("quiet", "exec sleep 1000", extra: "enabled = false")
    static let dicePath = BgWorkerBus.workerPathPrefix + "dice"

    /// Whether any process of the group led by `pid` is left.
    static func groupExists(_ pid: UInt32) -> Bool {
        kill(-pid_t(pid), 0) == 0 || errno != ESRCH
    }

    @Test func stopRepliesOnceTheGroupIsGoneAndStartRunsItAgain() async throws {
        try await DaemonFixture.with(Self.workers) { fixture in
            let daemon = try await fixture.daemonUniqueName()
            let pid = try await fixture.worker("dice").pid
            #expect(pid != 0)
            let monitor = try await fixture.monitor()
            // busctl, on the manager.
            async let reply = fixture.call("Stop", "s", ["dice"])
            let (changes, answer) = try await monitor.changes(untilReplyTo: "Stop", daemon: daemon)
            _ = try await reply
            #expect(answer.type == "method_return")
            #expect(changes.map(\.state) == ["stopping", "stopped"], "\(changes)")
            #expect(changes.last?.reason == "stop requested")
            #expect(!Self.groupExists(pid), "the process group is gone when Stop replies")
            let stopped = try await fixture.worker("dice")
            #expect(stopped.state == "stopped" && stopped.enabled && stopped.pid == 0)
            #expect(try await fixture.property("Enabled", worker: "dice").bool == true)

            // Stop again: nothing to do. gdbus, on the manager: Start.
            try await fixture.call("Stop", "s", ["dice"])
            let start = try await run(["gdbus", "call", "--address", fixture.bus.unixAddress, "--dest", DaemonFixture.busName,
                                       "--object-path", DaemonFixture.manager, "--method", "\(BgWorkerBus.managerInterface).Start", "dice"])
            #expect(start.status == 0, "\(start.stderr)")
            let running = try await fixture.worker("dice")
            #expect(running.state == "running" && running.pid != 0 && running.pid != pid, "Start replies once it runs")

            // python3-dbus, on the worker object: Stop() and Start().
            let script = """
                import dbus, sys
                bus = dbus.bus.BusConnection(sys.argv[1])
                worker = dbus.Interface(bus.get_object("\(BgWorkerBus.busName)", sys.argv[2]), "\(BgWorkerBus.workerInterface)")
                props = dbus.Interface(bus.get_object("\(BgWorkerBus.busName)", sys.argv[2]), "org.freedesktop.DBus.Properties")
                worker.Stop()
                print(props.Get("\(BgWorkerBus.workerInterface)", "State"), props.Get("\(BgWorkerBus.workerInterface)", "Pid"))
                worker.Start()
                print(props.Get("\(BgWorkerBus.workerInterface)", "State"), props.Get("\(BgWorkerBus.workerInterface)", "Pid") != 0)
                """
            let python = try await run(["/usr/bin/python3", "-c", script, fixture.bus.unixAddress, Self.dicePath])
            #expect(python.status == 0, "\(python.stderr)")
            #expect(python.stdout.split(separator: "\n").map(String.init) == ["stopped 0", "running True"])
        }
    }

    @Test func disabledWorkersStayDisabledAndUnknownNamesAreNoSuchWorker() async throws {
        try await DaemonFixture.with(Self.workers) { fixture in
            let stop = try await fixture.dbusSend("Stop", ["string:quiet"])
            #expect(stop.status == 0, "Stop of a disabled worker is a no-op: \(stop.output)")
            let start = try await fixture.dbusSend("Start", ["string:quiet"])
            #expect(start.output.contains("Error \(BgWorkerBus.ErrorName.disabled)"), "\(start.output)")
            let onObject = try await fixture.dbusSend(
                "Start", path: BgWorkerBus.workerPathPrefix + "quiet", interface: Self.workerInterface)
            #expect(onObject.output.contains("Error \(BgWorkerBus.ErrorName.disabled)"), "\(onObject.output)")
            #expect(try await fixture.worker("quiet").state == "disabled")
            for member in ["Stop", "Start"] {
                let result = try await fixture.dbusSend(member, ["string:nope"])
                #expect(result.output.contains("Error \(BgWorkerBus.ErrorName.noSuchWorker)"), "\(member): \(result.output)")
            }
            // Running: Start is a no-op.
            let pid = try await fixture.worker("dice").pid
            try await fixture.call("Start", "s", ["dice"])
            #expect(try await fixture.worker("dice").pid == pid)
        }
    }

    /// Stop needs no disk: with a state file that cannot be written (a directory in its place,
    /// which refuses even root) Disable is StateNotSaved but Stop works.
    @Test func stopWorksWithAnUnwritableStateDirectory() async throws {
        try await DaemonFixture.with(Self.workers) { fixture in
            let file = fixture.stateDirectory + "/enable-state"
            try? FileManager.default.removeItem(atPath: file)
            try FileManager.default.createDirectory(atPath: file, withIntermediateDirectories: true)
            let refused = try await fixture.dbusSend("Disable", ["string:dice"])
            #expect(refused.output.contains("StateNotSaved"), "\(refused.output)")
            let pid = try await fixture.worker("dice").pid
            try await fixture.call("Stop", "s", ["dice"])
            #expect(try await fixture.worker("dice").state == "stopped")
            #expect(!Self.groupExists(pid))
            try await fixture.call("Start", "s", ["dice"])
            #expect(try await fixture.worker("dice").state == "running")
        }
    }

    @Test(.enabled(if: rootTestsEnabled, "needs root: a read-only bind mount of the state folder"))
    func stopWorksWithAReadOnlyStateFolder() async throws {
        try await DaemonFixture.with(Self.workers) { fixture in
            let folder = fixture.stateDirectory
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            try await runChecked(["mount", "--bind", folder, folder])
            fixture.atTeardown { runBlocking(["umount", "-l", folder]) }
            try await runChecked(["mount", "-o", "remount,bind,ro", folder])
            try await fixture.call("Stop", "s", ["dice"])
            #expect(try await fixture.worker("dice").state == "stopped")
        }
    }

    @Test func stopIsNotPersistedAndEnableOrRestartStartIt() async throws {
        try await DaemonFixture.with(Self.workers) { fixture in
            try await fixture.call("Stop", "s", ["dice"])
            try await fixture.stopDaemon()
            try await fixture.startDaemon()
            #expect(try await fixture.worker("dice").state == "running", "a daemon restart runs it again")
            for member in ["Enable", "Restart"] {
                try await fixture.call("Stop", "s", ["dice"])
                try await fixture.call(member, "s", ["dice"])
                #expect(try await fixture.worker("dice").state == "running", "\(member) of a stopped worker")
            }
        }
    }

    @Test func startClearsFailedAndItsRestartCounter() async throws {
        try await DaemonFixture.with("", start: false) { fixture in
            let marker = fixture.directory.file("ran-once")
            try fixture.writeConfiguration(shellWorker(
                "flaky", "if [ -e '\(marker)' ]; then exec sleep 1000; fi; : > '\(marker)'; exit 3",
                extra: "start-limit-burst = 1\nrestart-delay = 0"))
            let monitor = try await fixture.monitor()
            try await fixture.startDaemon()
            _ = try await monitor.waitUntil(fixture, worker: "flaky", is: "failed")
            try await fixture.call("Start", "s", ["flaky"])
            let row = try await fixture.worker("flaky")
            #expect(row.state == "running" && row.pid != 0)
            #expect(try await fixture.property("Restarts", worker: "flaky").uint32 == 0)
        }
    }

    // MARK: - Per-worker log levels

    /// The changed properties of a PropertiesChanged message, by name.
    static func changedProperties(_ message: BusMessage) -> [String: BusValue] {
        guard message.member == "PropertiesChanged", message.body.count >= 2, case .object(let entries) = message.body[1] else {
            return [:]
        }
        return entries.compactMapValues { if case .object(let variant) = $0 { variant["data"] } else { nil } }
    }

    /// The next PropertiesChanged of `path` that carries `property`.
    static func nextChange(_ monitor: BusMonitor, _ path: String, _ property: String) async throws -> BusValue? {
        let message = try await monitor.waitFor("\(property) of \(path)") { message in
            message.path == path && changedProperties(message)[property] != nil
        }
        return changedProperties(message)[property]
    }

    @Test func workerLevelsOverrideClearAndFollowTheManager() async throws {
        let configuration = Self.workers + shellWorker("chatty", "exec sleep 1000", extra: #"log-level = "debug""#)
        try await DaemonFixture.with(configuration) { fixture in
            let chatty = BgWorkerBus.workerPathPrefix + "chatty"
            #expect(try await fixture.property("LogLevel", worker: "chatty").string == "debug")
            #expect(try await fixture.property("EffectiveLogLevel", worker: "chatty").string == "debug")
            #expect(try await fixture.property("LogLevel", worker: "dice").string == "")
            #expect(try await fixture.property("EffectiveLogLevel", worker: "dice").string == "info")
            #expect(environment(of: try await fixture.worker("chatty").pid)["BGWORKER_LOG_LEVEL"] == "debug")

            let monitor = try await fixture.monitor()
            // busctl: dice's own level.
            let set = try await fixture.busctl(["set-property", DaemonFixture.busName, Self.dicePath, Self.workerInterface,
                                                "LogLevel", "s", "trace"])
            #expect(set.status == 0, "\(set.stderr)")
            #expect(try await Self.nextChange(monitor, Self.dicePath, "EffectiveLogLevel")?.string == "trace")

            // The manager's change reaches quiet (which follows it) but not dice or chatty.
            let manager = try await fixture.busctl(["set-property", DaemonFixture.busName, DaemonFixture.manager,
                                                    DaemonFixture.interface, "LogLevel", "s", "warning"])
            #expect(manager.status == 0, "\(manager.stderr)")
            let next = try await monitor.waitFor("an EffectiveLogLevel change") { message in
                Self.changedProperties(message)["EffectiveLogLevel"] != nil
            }
            #expect(next.path == BgWorkerBus.workerPathPrefix + "quiet" && Self.changedProperties(next)["EffectiveLogLevel"]?.string == "warning")
            #expect(try await fixture.property("EffectiveLogLevel", worker: "dice").string == "trace")
            #expect(try await fixture.property("EffectiveLogLevel", worker: "chatty").string == "debug")

            // gdbus: clear chatty's own level; it follows the manager's again.
            let clear = try await run(["gdbus", "call", "--address", fixture.bus.unixAddress, "--dest", DaemonFixture.busName,
                                       "--object-path", chatty, "--method", "org.freedesktop.DBus.Properties.Set",
                                       Self.workerInterface, "LogLevel", "<''>"])
            #expect(clear.status == 0, "\(clear.stderr)")
            #expect(try await Self.nextChange(monitor, chatty, "EffectiveLogLevel")?.string == "warning")
            #expect(try await fixture.property("LogLevel", worker: "chatty").string == "")

            // A worker started later gets its effective level: quiet follows the manager's.
            try await fixture.call("Enable", "s", ["quiet"])
            #expect(environment(of: try await fixture.worker("quiet").pid)["BGWORKER_LOG_LEVEL"] == "warning")
            try await fixture.call("Restart", "s", ["dice"])
            let dicePid = try await fixture.worker("dice").pid
            #expect(environment(of: dicePid)["BGWORKER_LOG_LEVEL"] == "trace")
            #expect(environment(of: dicePid)["BGWORKER_OBJECT_PATH"] == Self.dicePath)

            // python3-dbus: an unknown level is InvalidArgs and changes nothing.
            let script = """
                import dbus, sys
                bus = dbus.bus.BusConnection(sys.argv[1])
                props = dbus.Interface(bus.get_object("\(BgWorkerBus.busName)", sys.argv[2]), "org.freedesktop.DBus.Properties")
                try:
                    props.Set("\(BgWorkerBus.workerInterface)", "LogLevel", "loud")
                except dbus.exceptions.DBusException as error:
                    print(error.get_dbus_name())
                props.Set("\(BgWorkerBus.workerInterface)", "LogLevel", "error")
                print(props.Get("\(BgWorkerBus.workerInterface)", "LogLevel"), props.Get("\(BgWorkerBus.workerInterface)", "EffectiveLogLevel"))
                """
            let python = try await run(["/usr/bin/python3", "-c", script, fixture.bus.unixAddress, Self.dicePath])
            #expect(python.status == 0, "\(python.stderr)")
            #expect(python.stdout.split(separator: "\n").map(String.init) == ["org.freedesktop.DBus.Error.InvalidArgs", "error error"])
        }
    }

    /// Concurrent requests each get their reply (issue 9): busctl Stop/Start of four workers at
    /// once, 150 rounds, every call with a 10 s deadline. With the method handlers' tasks preferring
    /// the connection's thread as their executor, a hop inside the supervisor became a suspension
    /// and a request that queued itself behind another lost its wake-up: 1 round in about 100
    /// here had a call that never answered.
    @Test(.timeLimit(.minutes(3))) func concurrentRequestsAllGetTheirReply() async throws {
        let names = ["w1", "w2", "w3", "w4"]
        try await DaemonFixture.with(names.map { shellWorker($0, "exec sleep 1000") }.joined()) { fixture in
            for round in 0..<150 {
                for verb in ["Stop", "Start"] {
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for name in names {
                            group.addTask {
                                let result = try await fixture.busctl(["--timeout=10", "call", DaemonFixture.busName,
                                                                       DaemonFixture.manager, DaemonFixture.interface, verb, "s", name])
                                guard result.status == 0 else {
                                    throw TestProcessError("round \(round): \(verb) \(name): \(result.stderr)")
                                }
                            }
                        }
                        try await group.waitForAll()
                    }
                }
            }
            for name in names { #expect(try await fixture.worker(name).state == "running") }
        }
    }

    /// A worker's main process traced by a debugger that is suspended (`strace -p` then ^Z) dies of
    /// the stop's SIGKILL into a zombie only its tracer can wait for: no SIGCHLD reaches bgworkerd
    /// until the tracer lets go. Stop (and the daemon's SIGTERM) waited for that for ever since
    /// exits come from SIGCHLD alone (abfe9bd; with the pidfd before, the loop blocked in waitid):
    /// the killed main's pidfd says it died, and the zombie is reaped once released.
    @Test func stopEndsAWorkerWhoseTracerIsSuspended() async throws {
        let seize = """
            import ctypes, os, signal, sys
            assert ctypes.CDLL(None).ptrace(0x4206, int(sys.argv[1]), None, None) == 0  # PTRACE_SEIZE
            print("seized", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
            """
        try await DaemonFixture.with(shellWorker("traced", "exec sleep 1000", extra: "stop-timeout = 0.5")) { fixture in
            let daemon = try fixture.daemon.pid
            for round in ["Stop", "SIGTERM"] {
                let pid = Int32(try await fixture.worker("traced").pid)
                let tracer = try ChildProcess(["/usr/bin/python3", "-c", seize, String(pid)])
                fixture.atTeardown { tracer.signal(SIGKILL); _ = try? await tracer.waitForExit() }
                #expect(try await tracer.readLine() == "seized")
                try await waitUntil("the tracer suspended") { ProcStat.read(pid: tracer.pid)?.state == "T" }
                if round == "SIGTERM" {
                    // The daemon stops its workers and exits (20 s deadline; 0.5 s stop timeout).
                    #expect(try await fixture.stopDaemon() == 0)
                    tracer.signal(SIGKILL)
                    break
                }
                try await fixture.call("Stop", "s", ["traced"])
                let stopped = try await fixture.worker("traced")
                #expect(stopped.state == "stopped" && stopped.pid == 0)
                #expect(try await fixture.property("LastExit", worker: "traced").string == "killed SIGKILL")
                #expect(ProcStat.read(pid: pid)?.state == "Z", "dead, and the tracer's to wait for first")
                // The tracer goes: the zombie is bgworkerd's again, and reaped.
                tracer.signal(SIGKILL)
                _ = try await tracer.waitForExit()
                try await waitUntil("the released zombie reaped by bgworkerd") {
                    ProcStat.read(pid: pid).map { $0.ppid != daemon } ?? true
                }
                try await fixture.call("Start", "s", ["traced"])
                let again = try await fixture.worker("traced")
                #expect(again.state == "running" && again.pid != 0 && Int32(again.pid) != pid)
            }
        }
    }
}
