import BgWorkerAPI
import Foundation
import Glibc
import Testing
import TestSupport

/// Workers through the daemon: Enable, Disable, Restart with the signals they emit and their order
/// against the reply; crashes, backoff and failure; stop timeouts; grandchildren; output floods.
@Suite(.timeLimit(.minutes(2)))
struct DaemonWorkerTests {
    @Test func disableThenEnableEmitTheirTransitionsBeforeTheReply() async throws {
        try await DaemonFixture.with(shellWorker("sleeper", "exec sleep 1000")) { fixture in
            let before = try await fixture.worker("sleeper")
            let daemon = try await fixture.daemonUniqueName()
            let monitor = try await fixture.monitor()

            let disable = try await fixture.dbusSend("Disable", ["string:sleeper"])
            #expect(disable.status == 0, "\(disable.output)")
            let disabled = try await monitor.changes(untilReplyTo: "Disable", daemon: daemon)
            #expect(disabled.reply.type == "method_return")
            #expect(disabled.changes.map(\.state) == ["stopping", "disabled"], "stopping before the reply, disabled no later")
            #expect(disabled.changes.first == StateChange(name: "sleeper", state: "stopping", pid: before.pid, reason: "disabled"))
            #expect(try await fixture.worker("sleeper") == WorkerRow(
                name: "sleeper", state: "disabled", enabled: false, pid: 0, path: before.path))
            #expect(try await fixture.property("LastExit", worker: "sleeper").string == "killed SIGTERM")
            #expect(try await fixture.property("Enabled", worker: "sleeper").bool == false)

            let enable = try await fixture.dbusSend("Enable", ["string:sleeper"])
            #expect(enable.status == 0, "\(enable.output)")
            let enabled = try await monitor.changes(untilReplyTo: "Enable", daemon: daemon)
            #expect(enabled.changes.map(\.state) == ["starting", "running"])
            #expect(enabled.changes.map(\.reason) == ["enabled", "started"])
            let after = try await fixture.worker("sleeper")
            #expect(after.state == "running" && after.enabled && after.pid != before.pid && after.pid != 0)
            #expect(enabled.changes.last?.pid == after.pid)

            // Safe to repeat: enabling an enabled worker changes nothing and says nothing.
            try await fixture.call("Enable", "s", ["sleeper"])
            #expect(try await fixture.worker("sleeper").pid == after.pid)
        }
    }

    @Test func restartStopsAndStartsAndRepliesWhenRunningAgain() async throws {
        try await DaemonFixture.with(shellWorker("sleeper", "exec sleep 1000")) { fixture in
            let before = try await fixture.worker("sleeper")
            let daemon = try await fixture.daemonUniqueName()
            let monitor = try await fixture.monitor()
            // Through the worker object's own method this time.
            let result = try await fixture.dbusSend(
                "Restart", path: before.path, interface: BgWorkerBus.workerInterface)
            #expect(result.status == 0, "\(result.output)")
            let restarted = try await monitor.changes(untilReplyTo: "Restart", daemon: daemon)
            #expect(restarted.changes.map(\.state) == ["stopping", "starting", "running"])
            #expect(restarted.changes.first?.reason == "restart requested")
            let after = try await fixture.worker("sleeper")
            #expect(after.state == "running" && after.pid != before.pid)
            #expect(try await fixture.property("Restarts", worker: "sleeper").uint32 == 0, "a Restart by hand is no automatic restart")
        }
    }

    @Test func aCrashBacksOffAndRestarts() async throws {
        let directory = try TemporaryDirectory(prefix: "bgw-crash")
        defer { directory.remove() }
        let started = try Fifo(directory.file("started"))
        let go = try Fifo(directory.file("go"))
        // The first run says so, waits for the test to watch, and exits 3; later runs stay up.
        let crashed = directory.file("crashed")
        let script = "echo $$ > \(started.path); if [ -e \(crashed) ]; then exec sleep 1000; fi; touch \(crashed); read x < \(go.path); exit 3"
        try await DaemonFixture.with(shellWorker("crasher", script, extra: "restart-delay = 0.2")) { fixture in
            let monitor = try await fixture.monitor()
            let firstPid = try await started.readLine()
            #expect(try await fixture.worker("crasher").pid == UInt32(firstPid))
            go.writeLine("crash now")
            let backoff = try await monitor.stateChange(of: "crasher", to: "backoff")
            #expect(backoff.reason == "exited with status 3" && backoff.pid == 0)
            let starting = try await monitor.stateChange(of: "crasher")
            #expect(starting.state == "starting" && starting.reason == "restart delay elapsed")
            let running = try await monitor.stateChange(of: "crasher")
            #expect(running.state == "running")
            let secondPid = try await started.readLine()
            #expect(running.pid == UInt32(secondPid))
            #expect(try await fixture.property("Restarts", worker: "crasher").uint32 == 1)
            #expect(try await fixture.property("LastExit", worker: "crasher").string == "exited 3")
            // The restart delay was a timer of the daemon's own pool, not libdispatch's.
            #expect(libdispatchThreads(of: try fixture.daemon.process.pid) == [])
        }
    }

    /// SIGCHLD ignored is inherited through exec (a parent's `trap '' CHLD`, Python's
    /// `signal(SIGCHLD, SIG_IGN)`), and with it the kernel reaps children at once: no exit status,
    /// and a worker's pid free for reuse while the daemon still signals its group. bgworkerd puts
    /// SIGCHLD back to its default, so a worker's exit code still reaches LastExit.
    @Test func aDaemonStartedWithSIGCHLDIgnoredStillSeesItsWorkersExitCodes() async throws {
        try await DaemonFixture.with(shellWorker("three", "exit 3", extra: "restart-delay = 60"), start: false) { fixture in
            let ignoring = ["/usr/bin/python3", "-c",
                            "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])"]
            let daemon = try await DaemonProcess(
                bus: fixture.bus, configPath: fixture.configPath, arguments: ["--runner", "process"],
                runtimeDirectory: fixture.directory.file("run"), wrapper: ignoring)
            fixture.atTeardown { await daemon.process.terminate(grace: .seconds(10)) }
            try await waitUntil("the worker's exit in LastExit", timeout: .seconds(20)) {
                try await fixture.property("LastExit", worker: "three").string != ""
            }
            #expect(try await fixture.property("LastExit", worker: "three").string == "exited 3", "log:\n\(daemon.log)")
        }
    }

    @Test func aCrashLoopEndsInFailedAndRestartClearsIt() async throws {
        let directory = try TemporaryDirectory(prefix: "bgw-loop")
        defer { directory.remove() }
        let healed = directory.file("healed")
        let go = try Fifo(directory.file("go"))
        // Each run waits for a line from the test, then exits 1 (until healed).
        let script = "if [ -e \(healed) ]; then exec sleep 1000; fi; read x < \(go.path); exit 1"
        let settings = "restart-delay = 0.05\nrestart-delay-max = 0.05\nstart-limit-burst = 3\nstart-limit-interval = 60"
        try await DaemonFixture.with(shellWorker("looper", script, extra: settings)) { fixture in
            let monitor = try await fixture.monitor()
            for run in 1...3 { go.writeLine("exit \(run)") }
            let failed = try await monitor.stateChange(of: "looper", to: "failed", timeout: .seconds(20))
            #expect(failed.reason == "start limit hit: 3 exits in 60 s")
            #expect(try await fixture.worker("looper").state == "failed")
            #expect(try await fixture.property("Restarts", worker: "looper").uint32 == 2)

            _ = FileManager.default.createFile(atPath: healed, contents: nil)
            let daemon = try await fixture.daemonUniqueName()
            try await fixture.call("Restart", "s", ["looper"])
            let restarted = try await monitor.changes(untilReplyTo: "Restart", daemon: daemon)
            #expect(restarted.changes.map(\.state) == ["starting", "running"])
            #expect(try await fixture.worker("looper").state == "running")
            #expect(try await fixture.property("Restarts", worker: "looper").uint32 == 0)
        }
    }

    /// A program that is gone after validation (configuration validation refuses a missing one).
    @Test func aProgramThatCannotStartBacksOffWithTheReason() async throws {
        let directory = try TemporaryDirectory(prefix: "bgw-missing")
        defer { directory.remove() }
        let program = try exitingProgram(in: directory)
        try await DaemonFixture.with(execWorker("missing", [program], extra: "restart-delay = 30")) { fixture in
            let monitor = try await fixture.monitor()
            let row = try await monitor.waitUntil(fixture, worker: "missing", is: "backoff")
            #expect(row.pid == 0)
            try FileManager.default.removeItem(atPath: program)
            let daemon = try await fixture.daemonUniqueName()
            try await fixture.call("Restart", "s", ["missing"])
            let restarted = try await monitor.changes(untilReplyTo: "Restart", daemon: daemon)
            #expect(restarted.changes.map(\.state) == ["starting", "backoff"])
            let reason = restarted.changes.last?.reason ?? ""
            #expect(reason.hasPrefix("failed to start: ") && reason.contains("No such file or directory"), "\(reason)")
        }
    }

    @Test func aWorkerIgnoringSIGTERMIsKilledAfterItsStopTimeout() async throws {
        let directory = try TemporaryDirectory(prefix: "bgw-stubborn")
        defer { directory.remove() }
        let fifo = try Fifo(directory.file("ready"))
        let script = "trap '' TERM; echo ready > \(fifo.path); exec sleep 1000"
        try await DaemonFixture.with(shellWorker("stubborn", script, extra: "stop-timeout = 0.5")) { fixture in
            #expect(try await fifo.readLine() == "ready")
            let took = try await elapsed {
                let result = try await fixture.dbusSend("Disable", ["string:stubborn"])
                #expect(result.status == 0, "\(result.output)")
            }
            #expect(took >= .milliseconds(500), "SIGKILL only after the stop timeout")
            #expect(took < .seconds(15), "the stop timeout is 0.5 s")
            #expect(try await fixture.worker("stubborn").state == "disabled")
            #expect(try await fixture.property("LastExit", worker: "stubborn").string == "killed SIGKILL")
        }
    }

    @Test func grandchildrenDieWithTheirWorker() async throws {
        let directory = try TemporaryDirectory(prefix: "bgw-family")
        defer { directory.remove() }
        let fifo = try Fifo(directory.file("child"))
        let script = "sleep 1000 & echo $! > \(fifo.path); wait"
        try await DaemonFixture.with(shellWorker("parent", script)) { fixture in
            let grandchild = try #require(Int32(try await fifo.readLine()))
            #expect(isAlive(grandchild))
            try await fixture.call("Disable", "s", ["parent"])
            try await waitUntilGone(grandchild)
            #expect(!isAlive(grandchild))
        }
    }

    @Test func aWorkerFloodingItsOutputDoesNotDelayMethodCalls() async throws {
        try await DaemonFixture.with(
            shellWorker("flood", "exec yes flooding-the-output") + shellWorker("calm", "exec sleep 1000"), start: false) { fixture in
            // The flood goes to the daemon's stderr: /dev/null here, so it costs CPU but no disk.
            let daemon = try await DaemonProcess(
                bus: fixture.bus, configPath: fixture.configPath, arguments: ["--runner", "process"],
                runtimeDirectory: fixture.directory.file("run"), logPath: "/dev/null")
            fixture.atTeardown { await daemon.process.terminate() }
            #expect(try await fixture.worker("flood").state == "running")
            // How fast is the bench's figure; the bounds include starting busctl and leave room for
            // a loaded machine (2 s failed with the suites in parallel beside two builds): a daemon
            // held up by the flood would not answer at all.
            for _ in 0..<5 {
                let took = try await elapsed { _ = try await fixture.listWorkers() }
                #expect(took < .seconds(10), "ListWorkers took \(took) during the flood")
            }
            let took = try await elapsed { try await fixture.call("Restart", "s", ["calm"]) }
            #expect(took < .seconds(10), "Restart took \(took) during the flood")
            #expect(try await fixture.worker("flood").state == "running", "the flood still runs")
            _ = try await daemon.stop()
        }
    }
}
