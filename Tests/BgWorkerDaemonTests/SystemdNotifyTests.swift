import BgWorkerAPI
import Foundation
import Glibc
import TestSupport
import Testing

@testable import BgWorkerDaemon

// Readiness and watchdog with the systemd runner (issue 11, item 4): the built bgworkerd inside a
// systemd namespace (SystemdDaemonFixture), workers that speak the notify protocol to systemd
// itself (systemd-notify, no one here wrote it), and the same answers on our bus as the process
// runner gives in DaemonNotifyTests, except where docs/systemd-runner.md says why not.

extension SystemdDaemonFixture {
    /// A property of a worker object on the daemon's bus.
    func workerProperty(_ name: String, _ worker: String) async throws -> BusValue {
        try await busctlProperty(address: bus.unixAddress, path: BgWorkerBus.workerPathPrefix + worker,
                                 interface: BgWorkerBus.workerInterface, name)
    }

    /// Waits until `worker`'s `property` satisfies `predicate`: reads it, and again after each
    /// PropertiesChanged of the worker's object.
    func waitForProperty(_ monitor: BusMonitor, _ worker: String, _ property: String, timeout: Duration = .seconds(20),
                         _ predicate: (BusValue) -> Bool) async throws -> BusValue {
        try await monitor.waitForProperty(of: worker, property, timeout: timeout, read: { try await workerProperty($0, worker) },
                                          predicate)
    }

    /// Waits until `worker` is `state` (ListWorkers, again after each of its WorkerStateChanged).
    @discardableResult
    func waitForState(_ monitor: BusMonitor, _ worker: String, _ state: String, timeout: Duration = .seconds(20)) async throws
        -> (state: String, pid: UInt32)
    {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let row = try await workers()[worker], row.state == state { return row }
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw TestProcessError("\(worker) is not \(state) after \(timeout)") }
            _ = try await monitor.stateChange(of: worker, timeout: left)
        }
    }

    /// A fifo in the fixture's folder (visible inside the namespace) a worker reads its steps from.
    func stepsFifo(_ name: String = "steps") throws -> String {
        let fifo = "\(directory)/\(name)"
        guard mkfifo(fifo, 0o666) == 0 else { throw TestProcessError("mkfifo \(fifo): \(errno)") }
        chmod(fifo, 0o666)
        return fifo
    }

    /// The shell line that waits for the test's next step on `fifo` (DaemonNotifyTests.step). It
    /// reads again after an end of file: a script that reopens the fifo for its next step while
    /// the test has not yet closed its end of the last one gets one (seen under load: the script
    /// ran on to its next READY=1 at once).
    static func awaitStep(_ fifo: String) -> String { "until read line < \(fifo); do :; done" }

    /// The command line of a notify sender of DaemonNotifyTests, put in the fixture's folder for
    /// units that run as `nobody`: not in the checkout, whose folders may be closed to others (a
    /// clone under a 0700 mktemp folder), nor in /tmp, which is the namespace's own.
    func sender(_ kind: NotifySender) async throws -> String {
        chmod(directory, 0o755)
        switch kind {
        case .python:
            let command = try DaemonNotifyTests.writeSender(to: "\(directory)/send.py")
            chmod("\(directory)/send.py", 0o644)
            return command
        case .c:
            let binary = "\(directory)/sd-notify-sender"
            try await DaemonNotifyTests.compileSdNotifySender(to: binary)
            chmod(binary, 0o755)
            return binary
        }
    }
}

extension BusMonitor {
    /// `state: reason` of each of `worker`'s WorkerStateChanged, up to the first to `state`.
    func states(of worker: String, until state: String, timeout: Duration = .seconds(30)) async throws -> [String] {
        let deadline = ContinuousClock.now + timeout
        var seen: [String] = []
        while true {
            let change = try await stateChange(of: worker, timeout: deadline - ContinuousClock.now)
            seen.append("\(change.state): \(change.reason)")
            if change.state == state { return seen }
        }
    }
}

/// The senders of DaemonNotifyTests: the raw python3 socket sender (each argument one datagram,
/// then a barrier) and Fixtures/sd-notify-sender.c (libsystemd's sd_notify with the arguments as
/// the lines of one message, then sd_notify_barrier).
enum NotifySender: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case python, c
    var testDescription: String { self == .python ? "python3 socket sender" : "C sender, libsystemd's sd_notify" }
}

extension SystemdNamespaceTests {
    @Suite("notify workers with the systemd runner, inside a systemd namespace", .timeLimit(.minutes(5)))
    struct SystemdNotifyTests {
        static let needsRoot: Comment = "needs root: PID and mount namespaces for a systemd of the test's own"

        /// `systemd-notify --status` while starting, then `--ready --status` on the test's step:
        /// `starting` while the unit is `activating` (the daemon itself is ready meanwhile), then
        /// `running` with ReadyAt and StatusText from the unit's StatusText; a new daemon after a
        /// SIGKILL adopts the unit with its pid and reads its StatusText.
        @Test(.enabled(if: rootTestsEnabled, needsRoot))
        func aNotifyUnitIsStartingUntilReadyAndIsAdoptedWithItsStatus() async throws {
            try await SystemdDaemonFixture.with("") { f in
                let fifo = try f.stepsFifo()
                try f.writeConfiguration(shellWorker(
                    "n", "systemd-notify --status=connecting; read line < \(fifo); systemd-notify --ready --status=up; exec sleep 1000",
                    extra: "ready = \"notify\"\nwatchdog = 30") + shellWorker("plain", "exec sleep 1000"))
                try await f.startDaemon()
                let monitor = try await f.monitor()
                defer { Task { await monitor.stop() } }
                let listed = try await f.workers()
                #expect(listed["plain"]?.state == "running")
                let starting = try #require(listed["n"])
                #expect(starting.state == "starting", "\(starting)")
                #expect(try await f.unitProperty("n", "Unit", "ActiveState") == "s \"activating\"")
                #expect(try await f.unitProperty("n", "Service", "Type") == "s \"notify\"")
                #expect(try await f.unitProperty("n", "Service", "NotifyAccess") == "s \"all\"")
                #expect(try await f.unitProperty("n", "Service", "WatchdogUSec") == "t 30000000")
                #expect(try await f.unitProperty("n", "Service", "TimeoutStartUSec") == "t 90000000")
                #expect(starting.pid != 0, "the main pid is known while the start job runs")
                #expect(try await f.unitProperty("n", "Service", "MainPID") == "u \(starting.pid)")
                _ = try await f.waitForProperty(monitor, "n", "StatusText") { $0.string == "connecting" }
                #expect(try await f.workerProperty("ReadyAt", "n").uint64 == 0)
                // systemd's variables: its own notify socket, the watchdog's; none for a plain worker.
                func environment(_ pid: UInt32) async throws -> [String: String] {
                    let text = try await f.namespace.run(inside: ["cat", "/proc/\(pid)/environ"]).stdout
                    return Dictionary(text.split(separator: "\0").map { entry in
                        let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
                        return (parts[0], parts.count > 1 ? parts[1] : "")
                    }, uniquingKeysWith: { _, last in last })
                }
                let variables = try await environment(starting.pid)
                #expect(variables["NOTIFY_SOCKET"] == "/run/systemd/notify")
                #expect(variables["WATCHDOG_USEC"] == "30000000")
                #expect(variables["WATCHDOG_PID"] == String(starting.pid))
                #expect(try await environment(try #require(listed["plain"]).pid)["NOTIFY_SOCKET"] == nil, "only notify workers get it")
                // A reload that changes nothing while it starts: it keeps waiting for READY=1.
                try await f.call("Reload")
                #expect(try await f.workers()["n"].map { [$0.state, String($0.pid)] } == ["starting", String(starting.pid)])

                let fd = open(fifo, O_WRONLY)
                _ = write(fd, "x\n", 2)
                close(fd)
                let change = try await monitor.stateChange(of: "n", to: "running", timeout: .seconds(20))
                #expect(change.reason == "ready (READY=1)")
                #expect(change.pid == starting.pid)
                _ = try await f.waitForProperty(monitor, "n", "StatusText") { $0.string == "up" }
                let readyAt = try #require(try await f.workerProperty("ReadyAt", "n").uint64)
                let now = UInt64(Date().timeIntervalSince1970 * 1e6)
                #expect(readyAt > now - 60_000_000 && readyAt <= now)
                #expect(try await f.workerProperty("StateChangedAt", "n").uint64 == readyAt)
                #expect(try await f.unitProperty("n", "Unit", "ActiveState") == "s \"active\"")

                // Adoption: the definition hash with ready/watchdog matches; StatusText is read.
                try await f.stopDaemon(signal: SIGKILL)
                try await f.startDaemon()
                let after = try await f.workers()
                #expect(after["n"]?.state == "running" && after["n"]?.pid == starting.pid, "adopted: \(after)")
                #expect(after["plain"]?.state == "running" && after["plain"]?.pid == listed["plain"]?.pid, "adopted: \(after)")
                let monitor2 = try await f.monitor()
                defer { Task { await monitor2.stop() } }
                _ = try await f.waitForProperty(monitor2, "n", "StatusText") { $0.string == "up" }
            }
        }

        /// A unit that is `reloading` (RELOADING=1, no READY=1 yet) when the daemon restarts is
        /// adopted with its pid, not stopped and started again, and shown reloading.
        @Test(.enabled(if: rootTestsEnabled, needsRoot))
        func aReloadingUnitIsAdopted() async throws {
            let workers = shellWorker("rl", "systemd-notify --ready; systemd-notify RELOADING=1; exec sleep 1000",
                                      extra: "ready = \"notify\"\nrestart-delay = 30")
            try await SystemdDaemonFixture.with(workers) { f in
                try await f.startDaemon()
                let monitor = try await f.monitor()
                defer { Task { await monitor.stop() } }
                _ = try await f.waitForProperty(monitor, "rl", "StateReason") { $0.string == "reloading (RELOADING=1)" }
                let before = try #require(try await f.workers()["rl"])
                #expect(try await f.unitProperty("rl", "Unit", "ActiveState") == "s \"reloading\"")
                try await f.stopDaemon(signal: SIGKILL)
                try await f.startDaemon()
                let after = try #require(try await f.workers()["rl"])
                #expect(after.pid == before.pid, "adopted, not started anew: \(after)")
                #expect(after.state == "starting", "still reloading")
                #expect(try await f.workerProperty("StateReason", "rl").string == "reloading (RELOADING=1)")
                #expect(try await f.units() == ["bgworker-rl.service"])
            }
        }

        /// A notify unit that never sends READY=1 (start-timeout 0: no limit) holds up nothing:
        /// the daemon is ready, another worker's Stop and Start go through systemd meanwhile, and
        /// Stop of the starting worker removes its unit by the time it replies.
        @Test(.enabled(if: rootTestsEnabled, needsRoot))
        func aStartingNotifyUnitHoldsUpNoOtherCommand() async throws {
            let workers = shellWorker("wait", "exec sleep 1000", extra: "ready = \"notify\"\nstart-timeout = 0")
                + shellWorker("other", "exec sleep 1000")
            try await SystemdDaemonFixture.with(workers) { f in
                try await f.startDaemon()
                #expect(try await f.workers()["wait"]?.state == "starting")
                #expect(try await f.unitProperty("wait", "Service", "TimeoutStartUSec") == "t 18446744073709551615")
                try await f.call("Stop", "s", ["other"])
                try await f.call("Start", "s", ["other"])
                let other = try #require(try await f.workers()["other"])
                #expect(other.state == "running")
                #expect(try await f.unitProperty("other", "Service", "MainPID") == "u \(other.pid)")
                try await f.call("Stop", "s", ["wait"])
                #expect(try await f.workers()["wait"]?.state == "stopped")
                #expect(try await f.units() == ["bgworker-other.service"])
            }
        }

        /// No READY=1 within start-timeout: systemd stops the unit, LastExit `start-timeout`, and
        /// the restart policy applies (backoff, then a new unit). A missed watchdog and
        /// WATCHDOG=trigger: LastExit `watchdog`.
        @Test(.enabled(if: rootTestsEnabled, needsRoot))
        func startTimeoutAndTheWatchdogAsLastExit() async throws {
            let workers = shellWorker("slow", "exec sleep 1000", extra: """
                ready = "notify"
                start-timeout = 1
                restart-delay = 0.5
                """)
                + shellWorker("hang", "systemd-notify --ready; exec sleep 1000", extra: """
                    ready = "notify"
                    watchdog = 0.5
                    stop-timeout = 1
                    restart-delay = 30
                    """)
                + shellWorker("trigger", "systemd-notify --ready; systemd-notify WATCHDOG=trigger; exec sleep 1000", extra: """
                    ready = "notify"
                    restart-delay = 30
                    """)
                + shellWorker("dies", "systemd-notify --ready; exit 7", extra: """
                    ready = "notify"
                    watchdog = 10
                    restart-delay = 30
                    """)
                + shellWorker("ext", "systemd-notify EXTEND_TIMEOUT_USEC=30000000; sleep 1.5; systemd-notify --ready; exec sleep 1000",
                              extra: "ready = \"notify\"\nstart-timeout = 1\nrestart-delay = 30")
            try await SystemdDaemonFixture.with(workers) { f in
                try await f.startDaemon()
                let monitor = try await f.monitor()
                defer { Task { await monitor.stop() } }
                let first = try #require(try await f.workers()["slow"])
                // systemd's stop after the timeout is no STOPPING=1: straight to backoff.
                let backoff = try await monitor.stateChange(of: "slow", timeout: .seconds(20))
                #expect(backoff.state == "backoff" && backoff.reason == "no READY=1 within start-timeout", "\(backoff)")
                #expect(backoff.pid == 0)
                #expect(try await f.workerProperty("LastExit", "slow").string == "start-timeout")
                let again = try await monitor.stateChange(of: "slow", to: "starting", timeout: .seconds(20))
                #expect(again.pid != first.pid, "restarted in a new unit")
                #expect(try await f.workerProperty("Restarts", "slow").uint32 == 1)

                try await f.waitForState(monitor, "hang", "backoff")
                #expect(try await f.workerProperty("LastExit", "hang").string == "watchdog")
                #expect(try await f.workerProperty("StateReason", "hang").string == "killed by the watchdog")
                try await f.waitForState(monitor, "trigger", "backoff")
                #expect(try await f.workerProperty("LastExit", "trigger").string == "watchdog")
                try await f.waitForState(monitor, "dies", "backoff")
                #expect(try await f.workerProperty("LastExit", "dies").string == "exited 7", "died between READY=1 and its first ping")
                try await f.waitForState(monitor, "ext", "running")
                #expect(try await f.workerProperty("LastExit", "ext").string == "", "EXTEND_TIMEOUT_USEC went to systemd")
            }
        }

        /// The python3 and C senders of DaemonNotifyTests, speaking to systemd from units that run
        /// as `nobody`, with the answers the process runner gives (the same state sequences, seen
        /// with these scripts under it). Each worker waits for its step, and every state it goes
        /// through from then on is checked:
        /// - `ready`: STATUS= while starting (ReadyAt 0), then READY=1 and STATUS=: `running`,
        ///   same pid, ReadyAt now, StatusText;
        /// - `trigger`: READY=1, then WATCHDOG=trigger: `backoff`, LastExit `watchdog`;
        /// - `hang`: WATCHDOG=1 pings that keep it running past its 1 s watchdog, then
        ///   WATCHDOG_USEC=4 s and silence: `backoff` (LastExit `watchdog`) no sooner than the new
        ///   deadline, then a restart (a new unit, a new pid, Restarts 1).
        @Test(.enabled(if: rootTestsEnabled, needsRoot), arguments: NotifySender.allCases)
        func readinessStatusAndTheWatchdogFromEachSender(_ kind: NotifySender) async throws {
            try await SystemdDaemonFixture.with("") { f in
                let send = try await f.sender(kind)
                let steps = try f.stepsFifo(), triggerSteps = try f.stepsFifo("trigger-steps"), hangSteps = try f.stepsFifo("hang-steps")
                let pings = "i=0; while [ $i -lt 15 ]; do i=$((i+1)); \(send) WATCHDOG=1 STATUS=ping$i; sleep 0.1; done"
                try f.writeConfiguration(
                    shellWorker("ready", "\(send) 'STATUS=waiting for the step'; read line < \(steps); \(send) READY=1 STATUS=up; exec sleep 1000",
                                extra: "ready = \"notify\"\nuser = \"nobody\"")
                        + shellWorker("trigger", "read line < \(triggerSteps); \(send) READY=1; \(send) WATCHDOG=trigger; exec sleep 1000", extra: """
                            ready = "notify"
                            user = "nobody"
                            restart-delay = 30
                            """)
                        + shellWorker("hang", """
                            \(SystemdDaemonFixture.awaitStep(hangSteps)); \(send) READY=1; \(pings); \(send) WATCHDOG_USEC=4000000 STATUS=silent; exec sleep 1000
                            """, extra: """
                            ready = "notify"
                            user = "nobody"
                            watchdog = 1
                            stop-timeout = 1
                            restart-delay = 0.5
                            """))
                try await f.startDaemon()
                // `changes` serves `states(of:until:)` alone: the waits for properties on `monitor` consume
                // the state changes of other workers.
                let monitor = try await f.monitor(), changes = try await f.monitor()
                defer { Task { await monitor.stop(); await changes.stop() } }

                _ = try await f.waitForProperty(monitor, "ready", "StatusText") { $0.string == "waiting for the step" }
                let starting = try #require(try await f.workers()["ready"])
                #expect(starting.state == "starting" && starting.pid != 0, "\(starting)")
                #expect(try await f.workerProperty("ReadyAt", "ready").uint64 == 0)
                DaemonNotifyTests.step(steps)
                let readied = try await changes.states(of: "ready", until: "running")
                #expect(readied == ["running: ready (READY=1)"])
                #expect(try await f.workers()["ready"]?.pid == starting.pid)
                _ = try await f.waitForProperty(monitor, "ready", "StatusText") { $0.string == "up" }
                let readyAt = try #require(try await f.workerProperty("ReadyAt", "ready").uint64)
                let now = UInt64(Date().timeIntervalSince1970 * 1e6)
                #expect(readyAt > now - 60_000_000 && readyAt <= now)

                DaemonNotifyTests.step(triggerSteps)
                let triggered = try await changes.states(of: "trigger", until: "backoff")
                #expect(triggered == ["running: ready (READY=1)", "backoff: killed by the watchdog"])
                #expect(try await f.workerProperty("LastExit", "trigger").string == "watchdog")

                let first = try await f.waitForState(monitor, "hang", "starting")
                DaemonNotifyTests.step(hangSteps)
                _ = try await f.waitForProperty(monitor, "hang", "StatusText", timeout: .seconds(60)) { $0.string == "silent" }
                let silentSeen = ContinuousClock.now
                #expect(try await f.workerProperty("Restarts", "hang").uint32 == 0, "15 pings over more than 1 s kept it running")
                let ended = try await changes.states(of: "hang", until: "backoff")
                #expect(ContinuousClock.now - silentSeen > .seconds(2), "WATCHDOG_USEC=4000000 replaced the 1 s watchdog")
                #expect(ended == ["running: ready (READY=1)", "backoff: killed by the watchdog"])
                #expect(try await f.workerProperty("LastExit", "hang").string == "watchdog")
                #expect(try await changes.stateChange(of: "hang", timeout: .seconds(20)).state == "starting")
                let pid = try await f.waitForProperty(monitor, "hang", "Pid") { ($0.uint32 ?? 0) != 0 }
                #expect(pid.uint32 != first.pid, "restarted in a new unit")
                #expect(try await f.workerProperty("Restarts", "hang").uint32 == 1)
            }
        }

        /// Where the runners differ (docs/systemd-runner.md): systemd's watchdog SIGABRT goes to
        /// every process of the unit's cgroup (KillMode=control-group), not to the main process
        /// alone as with the process runner, where a child that outlives the main process's
        /// SIGABRT is ended by the SIGKILL after stop-timeout. Here the child traps SIGABRT and
        /// says so; the stop timeout (SIGKILL) is far away.
        @Test(.enabled(if: rootTestsEnabled, needsRoot))
        func theWatchdogsSIGABRTReachesTheWholeCgroup() async throws {
            try await SystemdDaemonFixture.with("") { f in
                let send = try await f.sender(.c), marker = "\(f.directory)/child"
                let child = "(trap 'echo SIGABRT > \(marker); exit 9' ABRT; sleep 1000 & wait)"
                try f.writeConfiguration(shellWorker("hang", "trap '' ABRT; \(send) READY=1; \(child); wait", extra: """
                    ready = "notify"
                    watchdog = 0.5
                    stop-timeout = 60
                    restart-delay = 30
                    """))
                try await f.startDaemon()
                let monitor = try await f.monitor()
                defer { Task { await monitor.stop() } }
                try await f.waitForState(monitor, "hang", "backoff")
                #expect(try await f.workerProperty("LastExit", "hang").string == "watchdog")
                #expect((try? String(contentsOfFile: marker, encoding: .utf8)) == "SIGABRT\n", "the child got SIGABRT too")
            }
        }

        /// systemd's own stops are no STOPPING=1: the main process of a notify and of a plain
        /// worker exits while a child lives on in its cgroup, which systemd then stops
        /// (`deactivating`). Both went `stopping`, "stopping by itself (STOPPING=1)", before
        /// `backoff`; the process runner goes from running to backoff.
        @Test(.enabled(if: rootTestsEnabled, needsRoot))
        func aMainProcessThatExitsBeforeItsChildIsNotStoppingByItself() async throws {
            try await SystemdDaemonFixture.with("") { f in
                let steps = try f.stepsFifo(), plainSteps = try f.stepsFifo("plain-steps")
                try f.writeConfiguration(
                    shellWorker("n", "systemd-notify --ready; sleep 1000 & read line < \(steps); exit 3",
                                extra: "ready = \"notify\"\nrestart-delay = 30")
                        + shellWorker("plain", "sleep 1000 & read line < \(plainSteps); exit 3", extra: "restart-delay = 30"))
                try await f.startDaemon()
                let monitor = try await f.monitor()
                defer { Task { await monitor.stop() } }
                try await f.waitForState(monitor, "n", "running")
                #expect(try await f.workers()["plain"]?.state == "running")
                // Every state change from here on (both are running, each waits for its step).
                let changes = try await f.monitor()
                defer { Task { await changes.stop() } }
                DaemonNotifyTests.step(steps)
                let notify = try await changes.states(of: "n", until: "backoff")
                #expect(notify == ["backoff: exited with status 3"])
                DaemonNotifyTests.step(plainSteps)
                let plain = try await changes.states(of: "plain", until: "backoff")
                #expect(plain == ["backoff: exited with status 3"])
            }
        }

        /// RELOADING=1, READY=1, STOPPING=1 and an exit, as in DaemonNotifyTests.
        @Test(.enabled(if: rootTestsEnabled, needsRoot))
        func reloadingAndStoppingAsSystemdDefinesThem() async throws {
            try await SystemdDaemonFixture.with("") { f in
                let fifo = try f.stepsFifo()
                let step = SystemdDaemonFixture.awaitStep(fifo)
                let script = """
                    systemd-notify --ready; \(step); systemd-notify RELOADING=1; \(step); \
                    systemd-notify --ready; \(step); systemd-notify STOPPING=1; \(step); exit 0
                    """
                try f.writeConfiguration(shellWorker("r", script, extra: "ready = \"notify\"\nrestart-delay = 30"))
                try await f.startDaemon()
                let monitor = try await f.monitor()
                defer { Task { await monitor.stop() } }
                // Its `running` signal may come after the read that sees it: each wait below
                // names the state it waits for.
                try await f.waitForState(monitor, "r", "running")
                DaemonNotifyTests.step(fifo)
                let reloading = try await monitor.stateChange(of: "r", to: "starting")
                #expect(reloading.state == "starting" && reloading.reason == "reloading (RELOADING=1)", "\(reloading)")
                let readyAt = try await f.workerProperty("ReadyAt", "r")
                let stateNow = try await f.workerProperty("State", "r")
                #expect(readyAt.uint64 == 0, "ReadyAt \(readyAt), State \(stateNow)")
                DaemonNotifyTests.step(fifo)
                let reloaded = try await monitor.stateChange(of: "r", to: "running")
                #expect(reloaded.state == "running" && reloaded.reason == "reloaded (READY=1)", "\(reloaded)")
                DaemonNotifyTests.step(fifo)
                let stopping = try await monitor.stateChange(of: "r", to: "stopping")
                #expect(stopping.state == "stopping" && stopping.reason == "stopping by itself (STOPPING=1)", "\(stopping)")
                DaemonNotifyTests.step(fifo)
                let exited = try await monitor.stateChange(of: "r", to: "backoff")
                #expect(exited.state == "backoff" && exited.reason == "exited with status 0", "\(exited)")
            }
        }
    }
}
