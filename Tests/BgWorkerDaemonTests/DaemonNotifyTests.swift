import BgWorkerAPI
import Foundation
import Glibc
import Testing
import TestSupport

/// Worker readiness and watchdog (the sd_notify protocol) against the real daemon (process
/// runner), with senders no one here wrote: systemd-notify and python3's socket module.
@Suite(.timeLimit(.minutes(3)))
struct DaemonNotifyTests {
    /// python3 with a script that sends each argument as one datagram to NOTIFY_SOCKET, then
    /// waits on a barrier as sd_notify_barrier does (BARRIER=1 with a pipe's end; the daemon
    /// closes it once it has read everything before): a sender that exits before the daemon
    /// reads its message cannot be placed (docs/notify.md), which a shell's helper must avoid.
    static let send: String = {
        let path = "/tmp/bgw-notify-send-\(getuid()).py"
        return (try? writeSender(to: path)) ?? "/usr/bin/python3 \(path)"
    }()

    /// Writes the sender above to `path` (readable by all); returns the command line that runs it.
    static func writeSender(to path: String) throws -> String {
        try """
            import array, os, select, socket, sys
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            address = os.environ["NOTIFY_SOCKET"]
            for message in sys.argv[1:]:
                s.sendto(message.encode(), address)
            r, w = os.pipe()
            s.sendmsg([b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))], 0, address)
            os.close(w)
            poller = select.poll()
            poller.register(r, select.POLLHUP)
            poller.poll(5000)
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return "/usr/bin/python3 \(path)"
    }

    /// Compiles Fixtures/sd-notify-sender.c (libsystemd's sd_notify and sd_notify_barrier) to `binary`.
    static func compileSdNotifySender(to binary: String) async throws {
        let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/sd-notify-sender.c").path
        let compiled = try await run(["cc", "-o", binary, source, "-lsystemd"])
        try #require(compiled.status == 0, "cc failed: \(compiled.stderr)")
    }

    static func path(_ worker: String) -> String { BgWorkerBus.workerPathPrefix + worker }

    /// Waits until `property` of `worker` satisfies `predicate`: reads it, and after each
    /// PropertiesChanged of the worker's object reads it again.
    static func waitForProperty(
        _ fixture: DaemonFixture, _ monitor: BusMonitor, _ worker: String, _ property: String,
        timeout: Duration = .seconds(15), _ predicate: (BusValue) -> Bool
    ) async throws -> BusValue {
        try await monitor.waitForProperty(of: worker, property, timeout: timeout, read: { try await fixture.property($0, worker: worker) },
                                          predicate)
    }

    /// Writes a line into the fifo a worker reads its next step from. A worker reads each step
    /// with `until read line < fifo; do :; done`: a read that opens the fifo again before this
    /// end is closed gets end-of-file (systemd runner's tests saw steps skipped so).
    static func step(_ fifo: String, _ line: String = "x") {
        let writer = open(fifo, O_WRONLY)
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(writer, $0.baseAddress, $0.count) }
        close(writer)
    }

    /// Starts the daemon with `workers`, whose scripts read their steps from `$0`: the fifo
    /// returned, given as the argument after each script.
    static func withSteps(_ workers: String, _ body: (DaemonFixture, String) async throws -> Void) async throws {
        try await DaemonFixture.with("", start: false) { fixture in
            let fifo = fixture.directory.file("steps")
            #expect(mkfifo(fifo, 0o600) == 0)
            try fixture.writeConfiguration(workers.replacingOccurrences(of: "\"]\n", with: "\", \"\(fifo)\"]\n"))
            try await fixture.startDaemon()
            try await body(fixture, fifo)
        }
    }

    @Test func systemdNotifyFromAShellWorkerMakesItRunningWithItsStatus() async throws {
        let workers = shellWorker(
            "n", "systemd-notify --status=connecting; until read line < \"$0\"; do :; done; systemd-notify --ready --status=up; exec sleep 1000",
            extra: "ready = \"notify\"")
            + shellWorker("plain", "exec sleep 1000")
        try await Self.withSteps(workers) { fixture, fifo in
            let monitor = try await fixture.monitor()
            let status = try await Self.waitForProperty(fixture, monitor, "n", "StatusText") { $0.string == "connecting" }
            #expect(status.string == "connecting")
            let starting = try await fixture.worker("n")
            #expect(starting.state == "starting" && starting.pid != 0, "\(starting)")
            #expect(try await fixture.property("ReadyAt", worker: "n").uint64 == 0)
            let variables = environment(of: starting.pid)
            #expect(variables["NOTIFY_SOCKET"] == fixture.directory.file("run") + "/notify")
            #expect(variables["WATCHDOG_USEC"] == nil)
            #expect(environment(of: try await fixture.worker("plain").pid)["NOTIFY_SOCKET"] == nil, "only notify workers get it")

            Self.step(fifo)
            let change = try await monitor.stateChange(of: "n", to: "running")
            #expect(change.reason == "ready (READY=1)")
            #expect(change.pid == starting.pid)
            _ = try await Self.waitForProperty(fixture, monitor, "n", "StatusText") { $0.string == "up" }
            let readyAt = try #require(try await fixture.property("ReadyAt", worker: "n").uint64)
            let now = UInt64(Date().timeIntervalSince1970 * 1e6)
            #expect(readyAt > now - 60_000_000 && readyAt <= now)
            #expect(try await fixture.property("StateChangedAt", worker: "n").uint64 == readyAt)
        }
    }

    @Test func aRawPythonSenderAndAnOutsiderWhoseReadyIsIgnored() async throws {
        let script = """
            \(Self.send) STATUS=waiting; until read line < "$0"; do :; done; \(Self.send) STATUS=after; until read line < "$0"; do :; done; \
            \(Self.send) READY=1 STATUS=ready; exec sleep 1000
            """
        try await Self.withSteps(shellWorker("py", script, extra: "ready = \"notify\"")) { fixture, fifo in
            let monitor = try await fixture.monitor()
            _ = try await Self.waitForProperty(fixture, monitor, "py", "StatusText") { $0.string == "waiting" }
            // The test itself is no process of the worker: its READY=1 is dropped and logged.
            let outsider = try await run(["/usr/bin/python3", "-c", """
                import os, socket, sys
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1\\nSTATUS=spoofed", sys.argv[1])
                print(os.getpid())
                """, fixture.directory.file("run") + "/notify"])
            #expect(outsider.status == 0, "\(outsider.stderr)")
            let outsiderPid = outsider.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            // The worker's next datagram comes after the outsider's on the same socket.
            Self.step(fifo)
            _ = try await Self.waitForProperty(fixture, monitor, "py", "StatusText") { $0.string == "after" }
            #expect(try await fixture.worker("py").state == "starting")
            let log = try fixture.daemon.log
            #expect(log.contains("notify message refused from pid \(outsiderPid)"), "\(log)")
            Self.step(fifo)
            _ = try await monitor.stateChange(of: "py", to: "running")
            _ = try await Self.waitForProperty(fixture, monitor, "py", "StatusText") { $0.string == "ready" }
        }
    }

    @Test func aCProgramLinkedWithLibsystemdsSdNotify() async throws {
        // Fixtures/sd-notify-sender.c: sd_notify(READY=1, STATUS=...), then sd_notify_barrier,
        // run by the worker's shell as its child (in its group).
        try await DaemonFixture.with("", start: false) { fixture in
            let binary = fixture.directory.file("sd-notify-sender")
            try await Self.compileSdNotifySender(to: binary)
            try fixture.writeConfiguration(shellWorker("c", "\(binary) > /dev/null; echo barrier=$?; exec sleep 1000", extra: "ready = \"notify\""))
            try await fixture.startDaemon()
            let monitor = try await fixture.monitor()
            _ = try await monitor.waitUntil(fixture, worker: "c", is: "running")
            _ = try await Self.waitForProperty(fixture, monitor, "c", "StatusText") { $0.string == "from C via sd_notify" }
            #expect(try await fixture.property("StateReason", worker: "c").string == "ready (READY=1)")
        }
    }

    @Test func noReadyWithinTheStartTimeoutStopsTheGroupAsStartTimeout() async throws {
        // The worker's child stays in its group: it must go too. The shell writes its pid (the
        // group's id) first: the test may read the state only after the timeout.
        try await DaemonFixture.with("", start: false) { fixture in
            let pidFile = fixture.directory.file("pid")
            try fixture.writeConfiguration(shellWorker("slow", "echo $$ > \(pidFile); sleep 1000 & exec sleep 1000", extra: """
                ready = "notify"
                start-timeout = 1
                restart-delay = 30
                """))
            try await fixture.startDaemon()
            let monitor = try await fixture.monitor()
            let row = try await monitor.waitUntil(fixture, worker: "slow", is: "backoff")
            let change = try await fixture.property("StateReason", worker: "slow")
            #expect(change.string == "no READY=1 within start-timeout")
            #expect(try await fixture.property("LastExit", worker: "slow").string == "start-timeout")
            #expect(row.pid == 0)
            let group = try #require(pid_t(try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
            #expect(group > 1 && liveMembers(ofGroup: group).isEmpty, "the worker's child went with it")
        }
    }

    /// The socket file removed under the daemon (a cleaner of /run, an operator's rm): the next
    /// notify worker's start makes it anew. It did not: the daemon kept its unreachable socket,
    /// and every notify worker started from then on ended with LastExit start-timeout.
    @Test func aRemovedSocketFileIsMadeAgainAtTheNextStart() async throws {
        let workers = shellWorker("w", "\(Self.send) READY=1; exec sleep 1000", extra: """
            ready = "notify"
            start-timeout = 3
            """)
        try await DaemonFixture.with(workers) { fixture in
            let monitor = try await fixture.monitor()
            _ = try await monitor.waitUntil(fixture, worker: "w", is: "running")
            #expect(unlink(fixture.directory.file("run") + "/notify") == 0)
            try await fixture.call("Restart", "s", ["w"])
            let change = try await monitor.stateChange(of: "w", to: "running", timeout: .seconds(10))
            #expect(change.reason == "ready (READY=1)", "\(change)")
            #expect(try await fixture.property("LastExit", worker: "w").string != "start-timeout")
        }
    }

    @Test func extendTimeoutUsecGivesAStartMoreTime() async throws {
        // start-timeout 0.5 s; the worker asks for 30 s more, then waits 1 s before READY=1.
        let workers = shellWorker(
            "ext", "\(Self.send) EXTEND_TIMEOUT_USEC=30000000; sleep 1; \(Self.send) READY=1; exec sleep 1000",
            extra: "ready = \"notify\"\nstart-timeout = 0.5")
        try await DaemonFixture.with(workers) { fixture in
            let monitor = try await fixture.monitor()
            let change = try await monitor.stateChange(of: "ext", timeout: .seconds(20))
            #expect(change.state == "running", "\(change)")
            #expect(try await fixture.property("LastExit", worker: "ext").string == "")
        }
    }

    @Test func aMissedWatchdogAbortsTheMainProcessAndKillsTheGroup() async throws {
        // Starting until the test's step, then READY=1 and no ping. SIGABRT is ignored by the
        // shell's `trap`, so the SIGKILL after stop-timeout ends it; its child goes with the group.
        let workers = shellWorker("hang", "trap '' ABRT; until read line < \"$0\"; do :; done; \(Self.send) READY=1; sleep 1000 & wait", extra: """
            ready = "notify"
            watchdog = 0.3
            stop-timeout = 0.2
            restart-delay = 30
            """)
        try await Self.withSteps(workers) { fixture, fifo in
            let monitor = try await fixture.monitor()
            let starting = try await fixture.worker("hang")
            #expect(starting.state == "starting")
            let variables = environment(of: starting.pid)
            #expect(variables["WATCHDOG_USEC"] == "300000")
            #expect(variables["WATCHDOG_PID"] == String(starting.pid), "the worker's own pid, as systemd sets it")
            #expect(variables["NOTIFY_SOCKET"] != nil)
            Self.step(fifo)
            _ = try await monitor.waitUntil(fixture, worker: "hang", is: "backoff")
            #expect(try await fixture.property("LastExit", worker: "hang").string == "watchdog")
            #expect(try await fixture.property("StateReason", worker: "hang").string == "killed by the watchdog")
            #expect(liveMembers(ofGroup: pid_t(starting.pid)).isEmpty, "nothing of the group is left")
        }
    }

    @Test func theWatchdogsSignalIsSIGABRTToTheMainProcess() async throws {
        // Starting until the test's step; then READY=1 and no ping: the worker catches SIGABRT,
        // writes its pid and exits 3; the stop timeout (SIGKILL) is far away.
        try await DaemonFixture.with("", start: false) { fixture in
            let marker = fixture.directory.file("abrt")
            let fifo = fixture.directory.file("steps")
            #expect(mkfifo(fifo, 0o600) == 0)
            let program = fixture.directory.file("abrt.py")
            try """
                import os, signal, socket, time
                def got(*_):
                    open("\(marker)", "w").write(str(os.getpid()))
                    os._exit(3)
                signal.signal(signal.SIGABRT, got)
                open("\(fifo)").readline()
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
                time.sleep(1000)
                """.write(toFile: program, atomically: true, encoding: .utf8)
            try fixture.writeConfiguration(execWorker("py", ["/usr/bin/python3", program], extra: """
                ready = "notify"
                watchdog = 0.3
                stop-timeout = 60
                restart-delay = 30
                """))
            try await fixture.startDaemon()
            let monitor = try await fixture.monitor()
            let starting = try await fixture.worker("py")
            Self.step(fifo)
            _ = try await monitor.waitUntil(fixture, worker: "py", is: "backoff", timeout: .seconds(20))
            #expect(try await fixture.property("LastExit", worker: "py").string == "watchdog")
            #expect(try String(contentsOfFile: marker, encoding: .utf8) == String(starting.pid))
        }
    }

    @Test func pingsKeepItRunningUntilTheyStopAndWatchdogUsecChangesTheDeadline() async throws {
        // 40 pings 50 ms apart under a 1 s watchdog, then WATCHDOG_USEC=200000 and no more pings.
        let script = """
            \(Self.send) READY=1; i=0; while [ $i -lt 40 ]; do i=$((i+1)); \(Self.send) WATCHDOG=1 STATUS=ping$i; sleep 0.05; done; \
            \(Self.send) WATCHDOG_USEC=200000 STATUS=silent; exec sleep 1000
            """
        let workers = shellWorker("pinger", script, extra: "ready = \"notify\"\nwatchdog = 1\nrestart-delay = 30")
        try await DaemonFixture.with(workers) { fixture in
            let monitor = try await fixture.monitor()
            _ = try await Self.waitForProperty(fixture, monitor, "pinger", "StatusText", timeout: .seconds(30)) { $0.string == "ping40" }
            #expect(try await fixture.worker("pinger").state == "running", "2 s of pings under a 1 s watchdog")
            #expect(try await fixture.property("Restarts", worker: "pinger").uint32 == 0)
            let start = ContinuousClock.now
            _ = try await monitor.waitUntil(fixture, worker: "pinger", is: "backoff", timeout: .seconds(10))
            #expect(try await fixture.property("LastExit", worker: "pinger").string == "watchdog")
            // 200 ms, not the configured 1 s (plus the stop timeout's 5 s would not be reached:
            // sleep dies of SIGABRT at once).
            #expect(ContinuousClock.now - start < .seconds(5))
        }
    }

    /// The overload run of issue 11: 1,000 workers pinging every 50 ms got thousands of watchdog
    /// kills, because a deadline was judged while their pings sat unread on the socket behind
    /// other datagrams (64 are read per wake-up). Here the daemon is stopped (SIGSTOP) past the
    /// worker's deadline while 150 datagrams and then the worker's ping are queued; once it
    /// continues, the ping must count before the deadline is judged.
    @Test func aPingQueuedBehindOthersCountsBeforeTheDeadlineIsJudged() async throws {
        try await DaemonFixture.with("", start: false) { fixture in
            let steps = fixture.directory.file("steps")
            let reply = fixture.directory.file("reply")
            #expect(mkfifo(steps, 0o600) == 0 && mkfifo(reply, 0o600) == 0)
            let program = fixture.directory.file("pinger.py")
            try """
                import array, os, select, socket
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                address = os.environ["NOTIFY_SOCKET"]
                def barrier():
                    r, w = os.pipe()
                    s.sendmsg([b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))], 0, address)
                    os.close(w)
                    select.select([r], [], [])
                s.sendto(b"READY=1", address)
                barrier()
                def next_step():
                    # Opened again before the test closed the last step's end, the fifo gives
                    # end-of-file: read again (under load this sent an empty step, answered "").
                    while True:
                        line = open("\(steps)").readline().strip()
                        if line:
                            return line
                while True:
                    step = next_step()
                    s.sendto(b"WATCHDOG=1\\nSTATUS=" + step.encode(), address)
                    if step == "primed":
                        barrier()
                    open("\(reply)", "w").write(step + "\\n")
                """.write(toFile: program, atomically: true, encoding: .utf8)
            try fixture.writeConfiguration(execWorker("p", ["/usr/bin/python3", program], extra: """
                ready = "notify"
                watchdog = 10
                restart-delay = 30
                """))
            try await fixture.startDaemon()
            let monitor = try await fixture.monitor()
            let running = try await monitor.waitUntil(fixture, worker: "p", is: "running")
            func step(_ name: String) async throws {
                let answer = try ChildProcess(["cat", reply], captureStdout: true)
                Self.step(steps, name)
                #expect(try await answer.readLine() == name)
                try await answer.waitForExit()
            }
            // The daemon has read this ping (barrier): its deadline is at most 10 s from here. A
            // shorter watchdog ran out before the SIGSTOP landed: 1 s under load (5 of 8 runs beside
            // a build), 4 s in the ThreadSanitizer run of the CI of ce649d2.
            try await step("primed")
            let deadline = ContinuousClock.now + .seconds(10)
            let daemon = try fixture.daemon
            daemon.signal(SIGSTOP)
            let stopped = await onThread { () -> Int32 in
                var info = siginfo_t()
                return waitid(P_PID, id_t(daemon.pid), &info, WSTOPPED | WNOWAIT) == 0 ? 0 : errno
            }
            #expect(stopped == 0, "waitid: \(String(cString: strerror(stopped)))")
            // 150 is past the 64 datagrams read per wake-up. The queue holds max_dgram_qlen + 1
            // (512 where systemd's sysctl.d sets it, 10 by the kernel's default): a send to a full
            // queue blocks, so the outsiders leave room for the ping.
            let outsiders = min(150, Self.datagramQueueLength() - 1)
            let outsider = try ChildProcess([
                "/usr/bin/python3", "-c",
                "import socket, sys\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\nfor _ in range(int(sys.argv[2])): s.sendto(b'STATUS=outsider', sys.argv[1])",
                fixture.directory.file("run") + "/notify", String(outsiders),
            ])
            #expect(try await outsider.waitForExit() == 0, "\(outsiders) outsiders")
            try await Task.sleep(until: deadline + .milliseconds(200))  // the deadline passes while it is stopped
            try await step("late")
            daemon.signal(SIGCONT)
            let status = try? await Self.waitForProperty(fixture, monitor, "p", "StatusText", timeout: .seconds(10)) {
                $0.string == "late"
            }
            let after = try await fixture.worker("p")
            let lastExit = try await fixture.property("LastExit", worker: "p").string
            let log = (try? fixture.daemon.log) ?? ""
            #expect(status?.string == "late", "\(outsiders) outsiders; log:\n\(log)")
            #expect(after.state == "running" && after.pid == running.pid, "\(after); log:\n\(log)")
            #expect(lastExit == "", "log:\n\(log)")
        }
    }

    /// The kernel's bound on a unix datagram socket's queue (net.unix.max_dgram_qlen).
    static func datagramQueueLength() -> Int {
        let text = try? String(contentsOfFile: "/proc/sys/net/unix/max_dgram_qlen", encoding: .utf8)
        return text.flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 10
    }

    @Test func watchdogTriggerAndADeathBetweenReadyAndTheFirstPing() async throws {
        let workers = shellWorker("trigger", "\(Self.send) READY=1 WATCHDOG=trigger; exec sleep 1000", extra: """
            ready = "notify"
            restart-delay = 30
            """)
            + shellWorker("dies", "\(Self.send) READY=1; exit 7", extra: """
                ready = "notify"
                watchdog = 10
                restart-delay = 30
                """)
        try await DaemonFixture.with(workers) { fixture in
            let monitor = try await fixture.monitor()
            _ = try await monitor.waitUntil(fixture, worker: "trigger", is: "backoff")
            #expect(try await fixture.property("LastExit", worker: "trigger").string == "watchdog")
            _ = try await monitor.waitUntil(fixture, worker: "dies", is: "backoff")
            #expect(try await fixture.property("LastExit", worker: "dies").string == "exited 7")
        }
    }

    @Test func stoppingAndReloadingAsSystemdDefinesThem() async throws {
        let script = """
            \(Self.send) READY=1; until read line < "$0"; do :; done; \(Self.send) RELOADING=1; until read line < "$0"; do :; done; \(Self.send) READY=1; \
            until read line < "$0"; do :; done; \(Self.send) STOPPING=1; until read line < "$0"; do :; done; exit 0
            """
        try await Self.withSteps(shellWorker("r", script, extra: "ready = \"notify\"\nrestart-delay = 30")) { fixture, fifo in
            let monitor = try await fixture.monitor()
            _ = try await monitor.waitUntil(fixture, worker: "r", is: "running")
            // The `running` signal may still be queued after the read that saw it: each wait
            // names its state.
            Self.step(fifo)
            #expect(try await monitor.stateChange(of: "r", to: "starting").reason == "reloading (RELOADING=1)")
            #expect(try await fixture.worker("r").state == "starting")
            #expect(try await fixture.property("ReadyAt", worker: "r").uint64 == 0)
            Self.step(fifo)
            let reloaded = try await monitor.stateChange(of: "r", to: "running")
            #expect(reloaded.state == "running" && reloaded.reason == "reloaded (READY=1)")
            Self.step(fifo)
            let stopping = try await monitor.stateChange(of: "r", to: "stopping")
            #expect(stopping.state == "stopping" && stopping.reason == "stopping by itself (STOPPING=1)")
            Self.step(fifo)
            let exited = try await monitor.stateChange(of: "r", to: "backoff")
            #expect(exited.state == "backoff" && exited.reason == "exited with status 0", "\(exited)")
        }
    }

    @Test func aReloadWhileStartingKeepsWaitingForReady() async throws {
        let workers = shellWorker("w", "until read line < \"$0\"; do :; done; \(Self.send) READY=1; exec sleep 1000", extra: "ready = \"notify\"")
        try await Self.withSteps(workers) { fixture, fifo in
            let monitor = try await fixture.monitor()
            let starting = try await fixture.worker("w")
            #expect(starting.state == "starting")
            // A reload that changes nothing, and one that only adds a worker.
            try await fixture.call("Reload")
            let configuration = try String(contentsOfFile: fixture.configPath, encoding: .utf8)
            try configuration.appending(shellWorker("other", "exec sleep 1000")).write(toFile: fixture.configPath, atomically: true, encoding: .utf8)
            try await fixture.call("Reload")
            #expect(try await fixture.worker("w").pid == starting.pid)
            Self.step(fifo)
            let change = try await monitor.stateChange(of: "w", to: "running")
            #expect(change.pid == starting.pid)
        }
    }

    @Test func aFloodOfDatagramsLeavesTheDaemonAnswering() async throws {
        // 100,000 STATUS= datagrams from the worker (python blocks when the socket's queue is
        // full, as sd_notify would), while the test reads GetAll through busctl, one at a time.
        try await DaemonFixture.with("", start: false) { fixture in
            let script = fixture.directory.file("flood.py")
            try """
                import os, socket
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                s.connect(os.environ["NOTIFY_SOCKET"])
                s.send(b"READY=1")
                for i in range(100000):
                    s.send(b"STATUS=flood %d" % i)
                s.send(b"STATUS=done")
                """.write(toFile: script, atomically: true, encoding: .utf8)
            try fixture.writeConfiguration(shellWorker("flood", "/usr/bin/python3 \(script); exec sleep 1000", extra: "ready = \"notify\""))
            try await fixture.startDaemon()
            var reads = 0
            var slowest = Duration.zero
            let deadline = ContinuousClock.now + .seconds(120)
            while ContinuousClock.now < deadline {
                let started = ContinuousClock.now
                let all = try await fixture.busctl([
                    "call", DaemonFixture.busName, Self.path("flood"), "org.freedesktop.DBus.Properties", "GetAll", "s",
                    BgWorkerBus.workerInterface,
                ])
                slowest = max(slowest, ContinuousClock.now - started)
                #expect(all.status == 0, "\(all.stderr)")
                reads += 1
                if all.stdout.contains("\"StatusText\" s \"done\"") { break }
            }
            let text = try await fixture.property("StatusText", worker: "flood").string
            let log = (try? fixture.daemon.log) ?? ""
            #expect(text == "done", "\(String(describing: text)), log: \(log.suffix(2000))")
            #expect(try await fixture.worker("flood").state == "running")
            print("flood: \(reads) GetAll calls through busctl meanwhile, the slowest \(slowest)")
        }
    }
}
