import BgWorkerCore
import DBus
import Foundation
import Glibc
import Synchronization
import TestSupport
import Testing

@testable import BgWorkerDaemon

/// The systemd runner against a real systemd 252, PID 1 of a PID namespace of its own
/// (`SystemdNamespace`: private /tmp, /run and /var/tmp first). Each test starts its own namespace
/// (about 1-2 s) and ends it, so no unit outlives its test. Units' properties are read back with
/// busctl, a client no one here wrote; pids are checked inside the namespace.
/// Every test here starts a systemd of its own in a namespace, and they run one at a time: each
/// systemd takes several inotify instances, and `fs.inotify.max_user_instances` (128) is shared by
/// everything root runs on the machine; a dozen systemds starting at once (with other tests' buses
/// and journalds) ran out of them, and systemd then exits (status 255) before it is ready.
@Suite(.serialized) enum SystemdNamespaceTests {}

extension SystemdNamespaceTests {
    @Suite("SystemdRunner: a real systemd", .timeLimit(.minutes(3)))
    struct SystemdRunnerTests {
        static let needsRoot: Comment = "needs root: PID and mount namespaces for a systemd of the test's own"

        /// A namespace, a connection to its bus and a runner on it; all torn down afterwards.
        func withRunner(_ body: (SystemdNamespace, SystemdRunner, DBusConnection) async throws -> Void) async throws {
            try await SystemdNamespace.with { ns in
                let connection = try await DBusConnection.connect(.address(ns.busAddress))
                defer { connection.close() }
                let runner = SystemdRunner(connection: connection)
                do {
                    try await body(ns, runner, connection)
                } catch {
                    await runner.shutdown()
                    throw error
                }
                await runner.shutdown()
            }
        }

        /// The next exit event of `name`.
        func exit(of name: String, in runner: SystemdRunner, timeout: Duration = .seconds(20)) async throws -> (pid: Int32, status: WorkerExit) {
            let event = try await waitFor("the exit of \(name)", in: runner.events, timeout: timeout) {
                if case .exited(name, _, _) = $0 { true } else { false }
            }
            guard case let .exited(_, pid, status) = event else { throw TestProcessError("unreachable") }
            return (pid, status)
        }

        /// A property of a unit as busctl prints it (`s "active"`, `t 1048576`).
        func property(_ ns: SystemdNamespace, unit: String, _ interface: String, _ name: String) async throws -> String {
            let path = WorkerUnit.objectPath(ofUnit: unit).rawValue
            let r = try await ns.busctl(["get-property", "org.freedesktop.systemd1", path, "org.freedesktop.systemd1.\(interface)", name])
            guard r.status == 0 else { throw TestProcessError("busctl get-property \(name) of \(unit): \(r.stderr)") }
            return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }

        /// The loaded units named bgworker-*.service, as systemctl lists them inside the namespace.
        func listedUnits(_ ns: SystemdNamespace) async throws -> [String] {
            let r = try await ns.run(inside: ["systemctl", "list-units", "--all", "--plain", "--no-legend", "bgworker-*.service"])
            guard r.status == 0 else { throw TestProcessError("systemctl list-units: \(r.stderr)") }
            return r.stdout.split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) }
        }

        /// Whether `pid` runs inside the namespace: it exists and is not a zombie (an ended process
        /// that systemd, PID 1 there, has not reaped yet).
        func isRunning(_ ns: SystemdNamespace, _ pid: Int32) async throws -> Bool {
            try await isRunningInside(ns, pid)
        }

        func comm(_ ns: SystemdNamespace, _ pid: Int32) async throws -> String {
            try await ns.run(inside: ["cat", "/proc/\(pid)/comm"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }

        static func spec(_ name: String, _ argv: [String], hash: UInt64 = 1, stopTimeout: Duration = .seconds(5)) -> LaunchSpec {
            LaunchSpec(name: name, argv: argv, environment: ["PATH": "/usr/bin:/bin"], stopTimeout: stopTimeout, definitionHash: hash)
        }

        // MARK: start and stop

        @Test(.enabled(if: rootTestsEnabled, needsRoot))
        func startGivesTheMainPidAndStopEndsTheUnit() async throws {
            try await withRunner { ns, runner, _ in
                let began = ContinuousClock.now
                let pid = try await runner.start(Self.spec("sleeper", ["/bin/sleep", "300"]))
                let startTime = ContinuousClock.now - began
                print("systemd runner: start -> running (start job done) took \(startTime)")
                #expect(try await comm(ns, pid) == "sleep", "MainPID \(pid) is the sleep, a pid of the namespace")
                #expect(try await property(ns, unit: "bgworker-sleeper.service", "Unit", "ActiveState") == "s \"active\"")
                #expect(try await property(ns, unit: "bgworker-sleeper.service", "Service", "MainPID") == "u \(pid)")

                await #expect(throws: RunnerError.self) { _ = try await runner.start(Self.spec("sleeper", ["/bin/sleep", "1"])) }

                await runner.stop(name: "sleeper")
                let ended = try await exit(of: "sleeper", in: runner)
                #expect(ended.pid == pid)
                #expect(ended.status == .killed(SIGTERM))
                #expect(try await listedUnits(ns).isEmpty, "the unit is collected once it ended")
                await runner.stop(name: "sleeper")  // not running: nothing happens
            }
        }

        /// Start latency through systemd (StartTransientUnit to the start job's end), for the docs.
        @Test(.enabled(if: rootTestsEnabled, needsRoot))
        func startLatency() async throws {
            try await withRunner { _, runner, _ in
                var samples: [Duration] = []
                for round in 0..<11 {
                    let began = ContinuousClock.now
                    _ = try await runner.start(Self.spec("timed", ["/bin/sleep", "300"]))
                    if round > 0 { samples.append(ContinuousClock.now - began) }  // the first also makes the slice
                    await runner.stop(name: "timed")
                    _ = try await exit(of: "timed", in: runner)
                }
                samples.sort()
                print("systemd runner: start -> running, median of \(samples.count): \(samples[samples.count / 2]), max \(samples.last ?? .zero)")
                #expect(samples[samples.count / 2] < .seconds(2))
            }
        }

        @Test(.enabled(if: rootTestsEnabled, needsRoot))
        func stopKillsTheWholeCgroupAndEscalatesToSIGKILL() async throws {
            try await withRunner { ns, runner, _ in
                // The main process ignores SIGTERM, and so does a child it leaves in the cgroup. The
                // child's pid comes through a FIFO: reading it waits exactly until it is written.
                _ = try await ns.run(inside: ["mkfifo", "/run/child.fifo"])
                let script = "trap '' TERM; /bin/sh -c \"trap '' TERM; exec /bin/sleep 300\" & echo $! > /run/child.fifo; while :; do /bin/sleep 1; done"
                let pid = try await runner.start(Self.spec("stubborn", ["/bin/sh", "-c", script], stopTimeout: .milliseconds(500)))
                let childText = try await ns.run(inside: ["cat", "/run/child.fifo"])
                let child = try #require(Int32(childText.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
                await runner.stop(name: "stubborn")
                let ended = try await exit(of: "stubborn", in: runner)
                #expect(ended.pid == pid)
                #expect(ended.status == .killed(SIGKILL), "SIGKILL after the stop timeout")
                #expect(try await !isRunning(ns, child), "the child in the unit's cgroup is gone too")
            }
        }

        // MARK: exits

        @Test(.enabled(if: rootTestsEnabled, needsRoot))
        func exitsBecomeEventsWithTheirStatus() async throws {
            try await withRunner { _, runner, _ in
                let three = try await runner.start(Self.spec("three", ["/bin/sh", "-c", "exit 3"]))
                let e3 = try await exit(of: "three", in: runner)
                #expect(e3.pid == three && e3.status == .exited(3))

                // A program that dies at once may end before systemd saw its exec succeed (the start
                // job then fails): it still is a start and an exit. Several times, to meet both orders.
                for _ in 1...5 {
                    let segv = try await runner.start(Self.spec("segv", ["/bin/sh", "-c", "kill -SEGV $$"]))
                    let eSegv = try await exit(of: "segv", in: runner)
                    #expect(eSegv.pid == segv)
                    #expect(eSegv.status == .killed(SIGSEGV) || eSegv.status == .dumped(SIGSEGV), "\(eSegv.status)")
                }

                // The name is free again at once: a restart right after the exit works.
                let again = try await runner.start(Self.spec("three", ["/bin/sh", "-c", "exit 4"]))
                let e4 = try await exit(of: "three", in: runner)
                #expect(e4.pid == again && e4.status == .exited(4))
            }
        }

        @Test(.enabled(if: rootTestsEnabled, needsRoot))
        func aMissingProgramIsAFailedStartWithSystemdsReason() async throws {
            try await withRunner { ns, runner, _ in
                do {
                    _ = try await runner.start(Self.spec("missing", ["/usr/bin/bgworker-no-such-program"]))
                    Issue.record("a missing program started")
                } catch let error as RunnerError {
                    #expect(error.code == .spawnFailed)
                    #expect(error.worker == "missing")
                    #expect(error.description.contains("start job failed"), "\(error)")
                    #expect(error.description.contains("203 (EXEC)"), "\(error)")
                }
                #expect(try await listedUnits(ns).isEmpty)
                // A user that does not exist: systemd's 217/USER.
                var spec = Self.spec("nouser", ["/bin/true"])
                spec.user = "bgworker-no-such-user"
                await #expect { _ = try await runner.start(spec) } throws: { error in
                    "\(error)".contains("217 (USER)")
                }
            }
        }

        // MARK: names and properties

        @Test(.enabled(if: rootTestsEnabled, needsRoot))
        func oddWorkerNamesAreEscaped() async throws {
            try await withRunner { ns, runner, _ in
                var pids: [String: Int32] = [:]
                for name in ["a@b", "x.y-z_1", "9lives"] {
                    pids[name] = try await runner.start(Self.spec(name, ["/bin/sleep", "300"]))
                }
                let listed = Set(try await listedUnits(ns))
                #expect(listed == ["bgworker-a\\x40b.service", "bgworker-x.y-z_1.service", "bgworker-9lives.service"])
                for (name, pid) in pids {
                    let unit = systemdUnitName(forWorker: name)
                    #expect(workerName(fromSystemdUnitName: unit) == name)
                    #expect(try await property(ns, unit: unit, "Service", "MainPID") == "u \(pid)")
                    // systemd itself maps the unit to the object path the runner follows.
                    let r = try await ns.busctl(["call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                                                 "org.freedesktop.systemd1.Manager", "GetUnit", "s", unit])
                    #expect(r.stdout.contains(WorkerUnit(worker: name).path.rawValue), "\(r)")
                }
                for name in pids.keys { await runner.stop(name: name) }
                let started = pids
                let ended = Mutex<Set<String>>([])
                _ = try await waitFor("the exits of \(started.keys.sorted())", in: runner.events, timeout: .seconds(20)) { event in
                    ended.withLock { ended in
                        if case .exited(let name, let pid, _) = event, started[name] == pid { ended.insert(name) }
                        return ended.count == started.count
                    }
                }
            }
        }

        @Test(.enabled(if: rootTestsEnabled, needsRoot))
        func propertiesAndResourceSettingsReachTheUnit() async throws {
            try await withRunner { ns, runner, _ in
                let resources = SystemdRunnerUnitTests.everyResource
                // The worker (user nobody) writes its arguments into a FIFO the test reads.
                _ = try await ns.run(inside: ["mkfifo", "-m", "666", "/run/argv.fifo"])
                let argv = ["/bin/sh", "-c", "printf '%s|' \"$@\" > /run/argv.fifo; exec /bin/sleep 300", "sh", "$HOME", "${X}", "$$", "%n"]
                let spec = LaunchSpec(name: "limited", argv: argv, environment: ["X": "1", "PATH": "/usr/bin:/bin"],
                                      workingDirectory: "/var", user: "nobody", group: "nogroup",
                                      stopTimeout: .milliseconds(1500), definitionHash: 0x1234_5678_9abc_def0,
                                      resources: resources)
                let pid = try await runner.start(spec)
                let unit = "bgworker-limited.service"
                func service(_ name: String) async throws -> String { try await property(ns, unit: unit, "Service", name) }
                #expect(try await service("MemoryMax") == "t 104857600")
                #expect(try await service("CPUQuotaPerSecUSec") == "t 1500000")
                #expect(try await service("TasksMax") == "t 50")
                #expect(try await service("PrivateTmp") == "b true")
                #expect(try await service("ProtectSystem") == "s \"full\"")
                #expect(try await service("ProtectHome") == "s \"read-only\"")
                #expect(try await service("NoNewPrivileges") == "b true")
                #expect(try await service("KillMode") == "s \"control-group\"")
                #expect(try await service("TimeoutStopUSec") == "t 1500000")
                #expect(try await service("Slice") == "s \"bgworker.slice\"")
                #expect(try await service("Type") == "s \"exec\"")
                #expect(try await service("Restart") == "s \"no\"")
                #expect(try await service("User") == "s \"nobody\"")
                #expect(try await service("Group") == "s \"nogroup\"")
                #expect(try await service("WorkingDirectory") == "s \"/var\"")
                #expect(try await service("Environment") == "as 3 \"PATH=/usr/bin:/bin\" \"X=1\" \"BGWORKER_DEFINITION_HASH=123456789abcdef0\"")
                #expect(try await property(ns, unit: unit, "Unit", "CollectMode") == "s \"inactive-or-failed\"")
                #expect(try await property(ns, unit: unit, "Unit", "Description") == "s \"bgworker worker limited\"")

                // The process itself: its user, and argv as given (no $ expansion by systemd).
                let status = try await ns.run(inside: ["cat", "/proc/\(pid)/status"]).stdout
                let uid = status.split(separator: "\n").first { $0.hasPrefix("Uid:") }
                #expect(uid?.split(separator: "\t").dropFirst().first == "65534", "runs as nobody: \(uid ?? "")")
                let written = try await ns.run(inside: ["cat", "/run/argv.fifo"])
                #expect(written.stdout == "$HOME|${X}|$$|%n|")
                await runner.stop(name: "limited")
                _ = try await exit(of: "limited", in: runner)
            }
        }

        // MARK: adoption

        /// Units of `/bin/sleep 300` workers (name: definition hash) started by a runner whose
        /// daemon then vanished without stopping them (its bus connection closed); their pids.
        func unitsLeftBehind(_ ns: SystemdNamespace, _ workers: [String: UInt64]) async throws -> [String: Int32] {
            let connection = try await DBusConnection.connect(.address(ns.busAddress))
            defer { connection.close() }
            let old = SystemdRunner(connection: connection)
            var pids: [String: Int32] = [:]
            for (name, hash) in workers.sorted(by: { $0.key < $1.key }) {
                pids[name] = try await old.start(Self.spec(name, ["/bin/sleep", "300"], hash: hash))
            }
            return pids
        }

        @Test(.enabled(if: rootTestsEnabled, needsRoot))
        func aNewRunnerAdoptsMatchingUnitsAndStopsTheRest() async throws {
            try await SystemdNamespace.with { ns in
                let left = try await unitsLeftBehind(ns, ["keep": 11, "changed": 22, "removed": 33])
                let (keep, changed, removed) = (left["keep"] ?? 0, left["changed"] ?? 0, left["removed"] ?? 0)
                #expect(Set(try await listedUnits(ns)) == ["bgworker-keep.service", "bgworker-changed.service", "bgworker-removed.service"])

                let second = try await DBusConnection.connect(.address(ns.busAddress))
                defer { second.close() }
                let runner = SystemdRunner(connection: second)
                let adopted = await runner.adopt([
                    Self.spec("keep", ["/bin/sleep", "300"], hash: 11),
                    Self.spec("changed", ["/bin/sleep", "300"], hash: 23),
                    Self.spec("absent", ["/bin/sleep", "300"], hash: 44),
                ])
                #expect(adopted == ["keep": keep], "only the unchanged, configured worker is adopted, with its pid")
                // adopt changes nothing that runs (the daemon has no bus name yet); finishAdoption
                // stops the rest and returns once they are gone, so the new definition can start.
                for pid in [keep, changed, removed] { #expect(try await isRunning(ns, pid)) }
                await runner.finishAdoption()
                #expect(try await listedUnits(ns) == ["bgworker-keep.service"])
                for pid in [changed, removed] {
                    #expect(try await !isRunning(ns, pid), "pid \(pid) is gone")
                }
                #expect(try await comm(ns, keep) == "sleep", "the adopted worker never stopped")
                let restarted = try await runner.start(Self.spec("changed", ["/bin/sleep", "300"], hash: 23))
                #expect(restarted != changed)

                // The adopted worker's exit is followed from now on.
                _ = try await ns.run(inside: ["kill", "-KILL", "\(keep)"])
                let ended = try await exit(of: "keep", in: runner)
                #expect(ended.pid == keep && ended.status == .killed(SIGKILL))
                await runner.shutdown()
                #expect(try await listedUnits(ns).isEmpty)
            }
        }

        @Test(.enabled(if: rootTestsEnabled, needsRoot))
        func aStartThatFindsItsUnitRunningTakesItOverOrStopsIt() async throws {
            try await SystemdNamespace.with { ns in
                // Units left running by a start whose caller is gone (its answer lost with its bus).
                let left = try await unitsLeftBehind(ns, ["same": 5, "other": 6])
                let (same, other) = (left["same"] ?? 0, left["other"] ?? 0)

                let second = try await DBusConnection.connect(.address(ns.busAddress))
                defer { second.close() }
                let runner = SystemdRunner(connection: second)
                #expect(try await runner.start(Self.spec("same", ["/bin/sleep", "300"], hash: 5)) == same,
                        "the very definition runs already: taken over, not started twice")
                do {
                    _ = try await runner.start(Self.spec("other", ["/bin/sleep", "301"], hash: 7))
                    Issue.record("started a second unit of the same name")
                } catch let error as RunnerError {
                    #expect(error.code == .alreadyRunning)
                    #expect(error.context.contains("definition changed"), "\(error)")
                }
                try await waitUntilGoneInside(ns, other)
                let fresh = try await runner.start(Self.spec("other", ["/bin/sleep", "301"], hash: 7))
                #expect(fresh != other)
                _ = try await ns.run(inside: ["kill", "-KILL", "\(same)"])
                let ended = try await exit(of: "same", in: runner)
                #expect(ended.pid == same && ended.status == .killed(SIGKILL))
                await runner.shutdown()
            }
        }

        @Test(.enabled(if: rootTestsEnabled, needsRoot))
        func shutdownStopsEveryWorkerAndRefusesNewOnes() async throws {
            try await withRunner { ns, runner, _ in
                for name in ["s1", "s2", "s3"] { _ = try await runner.start(Self.spec(name, ["/bin/sleep", "300"])) }
                let collected = Task {
                    var names: [String] = []
                    for await case .exited(let name, _, _) in runner.events { names.append(name) }
                    return names.sorted()
                }
                await runner.shutdown()
                #expect(await collected.value == ["s1", "s2", "s3"], "every exit is reported, then the stream ends")
                #expect(try await listedUnits(ns).isEmpty)
                await #expect(throws: RunnerError.self) { _ = try await runner.start(Self.spec("late", ["/bin/true"])) }
            }
        }

        @Test(.enabled(if: rootTestsEnabled, needsRoot))
        func aReexecutedSystemdKeepsTheWorkerFollowed() async throws {
            try await withRunner { ns, runner, _ in
                let pid = try await runner.start(Self.spec("steady", ["/bin/sleep", "300"]))
                let reexec = try await ns.run(inside: ["systemctl", "daemon-reexec"], timeout: .seconds(60))
                #expect(reexec.status == 0, "\(reexec.stderr)")
                #expect(try await comm(ns, pid) == "sleep")
                _ = try await ns.run(inside: ["kill", "-TERM", "\(pid)"])
                let ended = try await exit(of: "steady", in: runner)
                #expect(ended.pid == pid && ended.status == .killed(SIGTERM))
            }
        }
    }
}

/// Whether `pid` runs inside the namespace: `/proc/PID/stat` exists there and its state is not
/// `Z` (ended, not yet reaped by the namespace's PID 1, which happens a moment after the unit ended).
func isRunningInside(_ ns: SystemdNamespace, _ pid: Int32) async throws -> Bool {
    let stat = try await ns.run(inside: ["cat", "/proc/\(pid)/stat"])
    guard stat.status == 0, let close = stat.stdout.lastIndex(of: ")") else { return false }
    let state = stat.stdout[stat.stdout.index(after: close)...].split(separator: " ").first
    return state != "Z"
}

extension SystemdNamespaceTests {
    @Suite("SystemdRunner: the bus connection", .timeLimit(.minutes(3)))
    struct SystemdRunnerConnectionTests {
        @Test(.enabled(if: rootTestsEnabled, SystemdRunnerTests.needsRoot))
        func aLostBusConnectionIsReplacedAndEveryUnitFollowedAgain() async throws {
            try await SystemdNamespace.with { ns in
                let address = ns.busAddress
                let runner = try await SystemdRunner(connect: { try await DBusConnection.connect(.address(address)) })
                let stays = try await runner.start(SystemdRunnerTests.spec("stays", ["/bin/sleep", "300"]))
                let dies = try await runner.start(SystemdRunnerTests.spec("dies", ["/bin/sleep", "300"]))
                let stopped = try await runner.start(SystemdRunnerTests.spec("stopped", ["/bin/sleep", "300"]))

                // The system bus goes away (dbus-daemon killed; dbus.socket starts it again on the
                // next connection). While it is away, one worker dies and one is asked to stop.
                let kill = try await ns.run(inside: ["systemctl", "kill", "--signal=KILL", "dbus.service"])
                #expect(kill.status == 0, "\(kill.stderr)")
                _ = try await ns.run(inside: ["kill", "-TERM", "\(dies)"])
                await runner.stop(name: "stopped")

                // Every end is reported once the runner is back on the bus and systemd with it.
                let ended = Mutex<[String: (Int32, WorkerExit)]>([:])
                _ = try await waitFor("the exits of dies and stopped", in: runner.events, timeout: .seconds(60)) { event in
                    ended.withLock { ended in
                        if case .exited(let name, let pid, let status) = event { ended[name] = (pid, status) }
                        return ended["dies"] != nil && ended["stopped"] != nil
                    }
                }
                let seen = ended.withLock { $0 }
                print("after the bus came back: \(seen)")
                #expect(seen["dies"]?.0 == dies)
                #expect(seen["stopped"]?.0 == stopped)
                #expect(seen["stays"] == nil)
                #expect(try await isRunningInside(ns, stays))

                // The worker that stayed is followed on the new connection.
                await runner.stop(name: "stays")
                let last = try await waitFor("the exit of stays", in: runner.events, timeout: .seconds(20)) {
                    if case .exited("stays", _, _) = $0 { true } else { false }
                }
                #expect(last == .exited(name: "stays", pid: stays, status: .killed(SIGTERM)))
                await runner.shutdown()
            }
        }
    }
}

/// Waits until `pid` (of the namespace) has ended: python3 inside waits on a pidfd (no polling).
func waitUntilGoneInside(_ ns: SystemdNamespace, _ pid: Int32, timeout: Duration = .seconds(20)) async throws {
    let seconds = timeout.components.seconds
    let script = """
        import os, select, sys
        try:
            fd = os.pidfd_open(int(sys.argv[1]))
        except ProcessLookupError:
            sys.exit(0)
        sys.exit(0 if select.select([fd], [], [], float(sys.argv[2]))[0] else 1)
        """
    let r = try await ns.run(inside: ["/usr/bin/python3", "-c", script, "\(pid)", "\(seconds)"], timeout: timeout + .seconds(5))
    guard r.status == 0 else { throw TestProcessError("pid \(pid) still runs after \(timeout): \(r.stderr)") }
}
