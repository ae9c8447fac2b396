import BgWorkerAPI
import Foundation
import Glibc
import Synchronization
import Testing
import TestSupport

@testable import BgWorkerDaemon

/// Chaos: the real bgworkerd (process runner) on a private dbus-daemon with plain, forking and
/// crash-looping workers; at random moments a worker process, the bus or the daemon is SIGKILLed
/// (and the bus or daemon started again), and Enable, Disable and Reload are called. Between
/// rounds and at the end the promises are checked against /proc and the bus:
///
/// - never two copies of a worker: its live processes (found by `BGWORKER_NAME` and this run's
///   `CHAOS_RUN` in /proc/PID/environ) are in one process group, the one of its `Pid`; and each
///   worker holds an exclusive `flock` for its life, so a copy started beside another exits 75,
///   which its `WorkerStateChanged` reason and the daemon's log show;
/// - nothing orphaned: once a new daemon is ready, every live worker process is in a group whose
///   leader is a live child of that daemon; after the last SIGTERM nothing of any worker lives;
/// - state and bus agree: `State`/`Pid` of every worker object match /proc;
/// - intents survive: what Enable/Disable answered holds after every daemon restart (`Enabled`).
///
/// `CHAOS_SECONDS` bounds the run (default 60 with CI=true, else 20; the time limit, a guard
/// against a hang, allows about 10 minutes); `CHAOS_SEED` replays a run
/// (the seed is printed at the start and in every failure).
@Suite(.timeLimit(.minutes(12)), .serialized)
struct ChaosTests {
    @Test func killingWorkersTheBusAndTheDaemonAtRandomKeepsEveryPromise() async throws {
        let environment = ProcessInfo.processInfo.environment
        let seconds = environment["CHAOS_SECONDS"].flatMap(Double.init) ?? (isCI ? 60 : 20)
        let seed = environment["CHAOS_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 0...UInt64(UInt32.max))
        print("chaos: seed \(seed), \(seconds) s (replay with CHAOS_SEED=\(seed) CHAOS_SECONDS=\(Int(seconds)))")
        let rig = try await ChaosRig(seed: seed)
        do {
            try await rig.runChaos(for: .milliseconds(Int(seconds * 1000)))
        } catch {
            Issue.record("chaos (seed \(seed)) stopped: \(error)\n\(rig.summary)")
        }
        await rig.teardown()
        print(rig.summary)
        for finding in rig.findings { Issue.record("chaos (seed \(seed)): \(finding)") }
    }
}

/// One worker of the chaos run and what its processes look like.
struct ChaosWorker {
    enum Kind: String { case plain, forking, crashing }
    let name: String
    let kind: Kind
    let argv: [String]
    /// The command lines its group leader may have (before and after an `exec` in its shell).
    let leaderCommands: Set<String>
    let settings: String
    let initiallyEnabled: Bool
}

/// A live (not zombie) process of one of this run's workers.
struct ChaosProcess: CustomStringConvertible {
    var pid: Int32
    var ppid: Int32
    var pgrp: Int32
    var worker: String
    var command: String
    var description: String { "\(pid) (group \(pgrp), parent \(ppid), \(worker): \(command))" }
}

/// Every `WorkerStateChanged` seen on any incarnation of the bus, in order.
final class ChaosSignals: Sendable {
    let changes = WatchedValue<[StateChange]>([])
    private let monitor = Mutex<(BusMonitor, Task<Void, Never>)?>(nil)

    /// Watches the bus at `address` (a new one after each bus restart).
    func attach(address: String) async throws {
        let watcher = try await BusMonitor(address: address, matches: [
            "type='signal',interface='\(BgWorkerBus.managerInterface)',member='WorkerStateChanged'",
        ])
        let changes = self.changes
        let task = Task {
            while let message = try? await watcher.next(timeout: .seconds(3600)) {
                if let change = StateChange(message) { changes.update { $0.append(change) } }
            }
        }
        let old = monitor.withLock { slot in defer { slot = (watcher, task) }; return slot }
        if let old { await Self.stop(old) }
    }

    func detach() async {
        if let old = monitor.withLock({ slot in defer { slot = nil }; return slot }) { await Self.stop(old) }
    }

    private static func stop(_ pair: (BusMonitor, Task<Void, Never>)) async {
        await pair.0.stop()
        await pair.1.value
    }

    var count: Int { changes.value.count }

    /// Returns when a change arrives after the first `seen`, or after `timeout`.
    func waitForChange(after seen: Int, timeout: Duration) async {
        _ = try? await changes.wait("a state change", timeout: timeout) { $0.count > seen }
    }
}

/// The run: a bus, a daemon, the workers' configuration, what was done and what was found.
final class ChaosRig {
    static let busName = BgWorkerBus.busName
    static let manager = BgWorkerBus.managerPath

    let directory: TemporaryDirectory
    let runID = uniqueID(10)
    var random: SeededRandom
    let workers: [ChaosWorker]
    var generation: [String: Int] = [:]
    /// The Enable/Disable choice last answered with success; absent while unknown (a call that
    /// failed or was cut short by a kill may or may not have been carried out).
    var intents: [String: Bool] = [:]
    var bus: PrivateBus
    var daemon: DaemonProcess?
    var drain: Task<Void, Never>?
    var daemonLogs: [String] = []
    let signals = ChaosSignals()
    var counts: [String: Int] = [:]
    var findings: [String] = []
    /// Workers of which an old group survived a daemon restart.
    var orphaned: Set<String> = []
    var started = ContinuousClock.now
    var rounds = 0

    var configPath: String { directory.file("bgworkerd.toml") }
    var runtimeDirectory: String { directory.file("run") }

    init(seed: UInt64) async throws {
        random = SeededRandom(seed: seed)
        directory = try TemporaryDirectory(prefix: "bgw-chaos")
        chmod(directory.path, 0o755)
        let locks = directory.file("locks")
        try FileManager.default.createDirectory(atPath: locks, withIntermediateDirectories: true)
        func lock(_ name: String) -> String { "\(locks)/\(name).lock" }
        let flock = ["/usr/bin/flock", "-n", "-E", "75"]
        var list: [ChaosWorker] = []
        for (i, delay) in ["0", "0.1", "0.2"].enumerated() {
            let name = "plain-\(i)"
            let argv = flock + [lock(name), "/bin/sleep", "100000"]
            list.append(ChaosWorker(name: name, kind: .plain, argv: argv, leaderCommands: [argv.joined(separator: " ")],
                                    settings: "restart-delay = \(delay)\nrestart-delay-max = 0.5", initiallyEnabled: i != 2))
        }
        // Forks at once, before its shell execs: the window issue 8 found (a SIGKILL of the
        // daemon between the clone and the record of the group left the grandchild behind).
        for (i, delay) in ["0", "0", "0.05", "0.1", "0.2", "0.3"].enumerated() {
            let name = "fork-\(i)"
            let inner = flock + [lock(name), "/bin/sleep", "100000"]
            let script = "(sleep 100000 &); exec \(inner.joined(separator: " "))"
            let argv = ["/bin/sh", "-c", script]
            list.append(ChaosWorker(name: name, kind: .forking, argv: argv,
                                    leaderCommands: [argv.joined(separator: " "), inner.joined(separator: " ")],
                                    settings: "restart-delay = \(delay)\nrestart-delay-max = 0.5", initiallyEnabled: true))
        }
        for (i, (life, settings)) in [("0.2", "restart-delay = 0.1\nstart-limit-burst = 0"),
                                      ("0.5", "restart-delay = 0.05\nstart-limit-burst = 4\nstart-limit-interval = 5")].enumerated() {
            let name = "crash-\(i)"
            let argv = flock + [lock(name), "/bin/sh", "-c", "sleep \(life); exit 3"]
            list.append(ChaosWorker(name: name, kind: .crashing, argv: argv, leaderCommands: [argv.joined(separator: " ")],
                                    settings: settings, initiallyEnabled: true))
        }
        workers = list
        for w in workers {
            generation[w.name] = 0
            intents[w.name] = w.initiallyEnabled
        }
        bus = try await PrivateBus(directory: directory)
        try writeConfiguration()
        try await signals.attach(address: bus.unixAddress)
        try await startDaemon()
    }

    // MARK: The run

    func runChaos(for duration: Duration) async throws {
        started = ContinuousClock.now
        let end = started + duration
        while ContinuousClock.now < end {
            rounds += 1
            for _ in 0..<(4 + random.below(6)) {
                try await randomAction()
                try await pause(upTo: 150)
            }
            try await settleAndCheck("round \(rounds)")
        }
        // The end: one more check of everything, then the last SIGTERM leaves nothing behind.
        try await settleAndCheck("the end")
        try await checkIntents("the end")
        try await stopDaemonAndCheckNothingIsLeft()
    }

    func randomAction() async throws {
        try checkDaemonAlive()
        switch random.below(13) {
        case 0..<5: try await killWorkerProcess()
        case 5..<8: try await enableOrDisable()
        case 8: try await reload(changing: random.below(3))
        case 9: try await killBus()
        case 10: try await killDaemon(during: nil)
        case 11: try await killDaemon(during: "Reload")
        default: try await killDaemon(during: random.below(2) == 0 ? "Enable" : "Disable")
        }
    }

    /// SIGKILL to one live process of a random worker: its leader or a grandchild.
    func killWorkerProcess() async throws {
        let processes = ourProcesses()
        guard !processes.isEmpty else { return }
        let victim = processes[random.below(processes.count)]
        kill(victim.pid, SIGKILL)
        counts[victim.pid == victim.pgrp ? "worker leader SIGKILL" : "worker grandchild SIGKILL", default: 0] += 1
    }

    func enableOrDisable() async throws {
        let worker = workers[random.below(workers.count)]
        let enable = random.below(2) == 0
        let method = enable ? "Enable" : "Disable"
        counts[method, default: 0] += 1
        let result = try await busctl(["call", Self.busName, Self.manager, Self.busName, method, "s", worker.name])
        intents[worker.name] = result.status == 0 ? enable : nil
        if result.status != 0 { counts["\(method) failed", default: 0] += 1 }
    }

    /// Reload, with `changing` workers' definitions changed (a new environment value), which
    /// restarts them; forking workers are chosen first, to restart as many of them as possible.
    func reload(changing: Int) async throws {
        try changeDefinitions(changing)
        counts["Reload", default: 0] += 1
        let result = try await busctl(["call", Self.busName, Self.manager, Self.busName, "Reload"])
        if result.status != 0 { counts["Reload failed", default: 0] += 1 }
    }

    func changeDefinitions(_ count: Int) throws {
        guard count > 0 else { return }
        var candidates = workers.filter { $0.kind == .forking }.map(\.name).shuffled(using: &random)
        candidates += workers.filter { $0.kind != .forking }.map(\.name).shuffled(using: &random)
        for name in candidates.prefix(count == 2 ? 6 : 1) { generation[name, default: 0] += 1 }
        try writeConfiguration()
    }

    func killBus() async throws {
        counts["bus SIGKILL", default: 0] += 1
        await signals.detach()
        await bus.kill()
        try await pause(upTo: 300)
        bus = try await PrivateBus(socketPath: bus.socketPath, directory: directory)
        try await signals.attach(address: bus.unixAddress)
        try await waitForTheDaemonOnTheBus()
    }

    /// SIGKILL of the daemon, at a random moment of a call of `method` when given (a Reload that
    /// restarts up to six forking workers, or an Enable/Disable); then a new daemon, and the
    /// checks that only make sense right after it started.
    func killDaemon(during method: String?) async throws {
        let daemon = try currentDaemon()
        var call: Task<Void, Never>?
        if let method {
            let arguments: [String]
            if method == "Reload" {
                try changeDefinitions(2)
                arguments = []
            } else {
                let worker = workers[random.below(workers.count)]
                intents[worker.name] = nil  // cut short: done or not
                arguments = ["s", worker.name]
            }
            let argv = ["busctl", "--address=\(bus.unixAddress)", "--timeout=10", "call", Self.busName, Self.manager,
                        Self.busName, method] + arguments
            call = Task { _ = try? await run(argv) }
            try await Task.sleep(for: .milliseconds(random.below(40)))
        }
        counts[method.map { "daemon SIGKILL during \($0)" } ?? "daemon SIGKILL", default: 0] += 1
        drain?.cancel()
        daemon.signal(SIGKILL)
        _ = try await daemon.process.waitForExit(timeout: .seconds(10))
        self.daemon = nil
        await call?.value
        try await startDaemon()
        try await checkNothingOrphaned("after daemon SIGKILL #\(counts.filter { $0.key.hasPrefix("daemon SIGKILL") }.values.reduce(0, +))")
        try await checkIntents("after a daemon restart")
    }

    // MARK: The daemon and the bus

    func writeConfiguration() throws {
        // Not root: our own group may change state (else every Enable is AccessDenied).
        let admin = geteuid() == 0 ? "" : "admin-group = \"\(getegid())\""
        var text = """
            [daemon]
            state-directory = "\(directory.file("state"))"
            \(admin)

            """
        for w in workers {
            text += """

                [worker.\(w.name)]
                exec = [\(w.argv.map { "\"\($0)\"" }.joined(separator: ", "))]
                enabled = \(w.initiallyEnabled)
                stop-timeout = 2.0
                environment = { CHAOS_RUN = "\(runID)", CHAOS_GEN = "\(generation[w.name] ?? 0)" }
                \(w.settings)

                """
        }
        try text.write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    func startDaemon() async throws {
        let started = try await DaemonProcess(bus: bus, configPath: configPath, arguments: ["--runner", "process"],
                                              runtimeDirectory: runtimeDirectory)
        daemon = started
        daemonLogs.append(started.logPath)
        // Drain its NOTIFY_SOCKET as systemd would: a full socket would block the daemon.
        drain = Task {
            while !Task.isCancelled { _ = try? await started.notifications.receive(timeout: .seconds(1)) }
        }
    }

    func currentDaemon() throws -> DaemonProcess {
        guard let daemon else { throw TestProcessError("no daemon runs") }
        return daemon
    }

    /// The supervisor must never die: an exit we did not cause ends the run.
    func checkDaemonAlive() throws {
        let daemon = try currentDaemon()
        if daemon.process.hasExited {
            throw TestProcessError("bgworkerd died on its own\n--- its log (end) ---\n\(daemon.log.suffix(4000))")
        }
    }

    /// After a bus restart: until the daemon owns its name on the new bus.
    func waitForTheDaemonOnTheBus(timeout: Duration = .seconds(15)) async throws {
        let names = try await BusMonitor(address: bus.unixAddress, matches: [
            "type='signal',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='\(Self.busName)'",
        ])
        do {
            if try await busctl(["status", Self.busName]).status != 0 {
                _ = try await names.waitFor("bgworkerd owning its name on the new bus", timeout: timeout) { message in
                    message.body.count == 3 && message.body[2].string?.isEmpty == false
                }
            }
        } catch {
            await names.stop()
            throw error
        }
        await names.stop()
    }

    func teardown() async {
        drain?.cancel()
        if let daemon { await daemon.process.terminate(grace: .seconds(10)) }
        await signals.detach()
        // Whatever a failed run left behind.
        for process in ourProcesses() { kill(process.pid, SIGKILL) }
        await bus.kill(signal: SIGTERM)
        if findings.isEmpty { directory.remove() } else { print("chaos: the daemons' logs are kept in \(directory.path)") }
    }

    func busctl(_ arguments: [String]) async throws -> (status: Int32, stdout: String, stderr: String) {
        try await run(["busctl", "--address=\(bus.unixAddress)", "--timeout=10"] + arguments)
    }

    /// Pacing between actions: the chaos's own randomness, not synchronisation.
    func pause(upTo milliseconds: Int) async throws {
        try await Task.sleep(for: .milliseconds(random.below(milliseconds + 1)))
    }

    // MARK: What /proc says

    /// Every live process of this run's workers.
    func ourProcesses() -> [ChaosProcess] {
        ProcStat.all().compactMap { stat in
            guard stat.state != "Z", stat.state != "X" else { return nil }
            let env = environment(of: UInt32(stat.pid))
            guard env["CHAOS_RUN"] == runID, let name = env["BGWORKER_NAME"] else { return nil }
            return ChaosProcess(pid: stat.pid, ppid: stat.ppid, pgrp: stat.pgrp, worker: name,
                                command: (commandLine(of: UInt32(stat.pid)) ?? "?").trimmingCharacters(in: .whitespaces))
        }
    }

    /// Waits until each of `processes` is gone, each for at most `timeout`; returns those left.
    func survivors(_ processes: [ChaosProcess], timeout: Duration) async -> [ChaosProcess] {
        var left: [ChaosProcess] = []
        for process in processes {
            if (try? await waitForProcessExit(pid: process.pid, timeout: timeout)) == nil,
               let stat = ProcStat.read(pid: process.pid), stat.state != "Z" {
                left.append(process)
            }
        }
        return left
    }

    // MARK: The invariants

    /// Once a new daemon is ready, every live worker process must be in a group led by a live
    /// child of that daemon. A member of a group that is being killed right now (its leader
    /// just exited) gets two seconds to go; anything else is an old copy that survived.
    func checkNothingOrphaned(_ when: String) async throws {
        let daemonPid = try currentDaemon().process.pid
        let processes = ourProcesses()
        let leaders = Dictionary(processes.filter { $0.pid == $0.pgrp }.map { ($0.pid, $0) }, uniquingKeysWith: { a, _ in a })
        let foreign = processes.filter { leaders[$0.pgrp]?.ppid != daemonPid }
        let orphans = await survivors(foreign, timeout: .seconds(2))
        guard !orphans.isEmpty else { return }
        finding("\(when): \(orphans.count) process(es) of an old worker group survived the new daemon's start: \(orphans)")
        orphaned.formUnion(orphans.map(\.worker))
        for orphan in orphans { kill(orphan.pid, SIGKILL) }  // so that later rounds test afresh
    }

    /// Every worker with a known intent shows it in `Enabled`.
    func checkIntents(_ when: String) async throws {
        let objects = try await managedObjects(deadline: ContinuousClock.now + .seconds(15))
        for w in workers {
            guard let intent = intents[w.name] else { continue }
            let enabled = objects[w.name]?["Enabled"]?.bool
            if enabled != intent {
                finding("\(when): \(w.name) was \(intent ? "enabled" : "disabled") over the bus, but Enabled is \(enabled.map(String.init) ?? "missing")")
                intents[w.name] = nil
            }
        }
    }

    /// Waits (on the daemon's signals, with a deadline) until the bus and /proc agree on every
    /// worker, then records what still disagrees.
    func settleAndCheck(_ when: String, timeout: Duration = .seconds(20)) async throws {
        try checkDaemonAlive()
        let deadline = ContinuousClock.now + timeout
        var problems: [String] = []
        while true {
            let seen = signals.count
            let objects = try await managedObjects(deadline: deadline)
            let processes = ourProcesses()
            let daemonPid = try currentDaemon().process.pid
            problems = []
            var strays: [ChaosProcess] = []
            for w in workers {
                let (problem, extra) = check(w, objects[w.name], processes.filter { $0.worker == w.name }, daemonPid: daemonPid)
                if let problem { problems.append(problem) }
                strays += extra
            }
            if problems.isEmpty { return }
            let left = deadline - ContinuousClock.now
            if left <= .zero { break }
            // A change is under way (its signal will come) or a killed group is on its way out.
            if let stray = strays.first {
                _ = try? await waitForProcessExit(pid: stray.pid, timeout: min(left, .seconds(1)))
            } else {
                await signals.waitForChange(after: seen, timeout: min(left, .seconds(1)))
            }
        }
        for problem in problems { finding("\(when), after \(timeout) of settling: \(problem)") }
        // Kill what should not run, so that the next rounds test afresh.
        let objects = try await managedObjects(deadline: ContinuousClock.now + .seconds(5))
        for process in ourProcesses() {
            let pid = objects[process.worker]?["Pid"]?.uint32 ?? 0
            if process.pgrp != Int32(pid) { kill(process.pid, SIGKILL) }
        }
    }

    /// One worker against /proc: a problem (nil when they agree) and the processes outside its
    /// group (strays, which may be a killed group on its way out).
    func check(_ w: ChaosWorker, _ properties: [String: BusValue]?, _ processes: [ChaosProcess],
               daemonPid: Int32) -> (String?, [ChaosProcess]) {
        guard let properties, let state = properties["State"]?.string, let pid = properties["Pid"]?.uint32,
              let enabled = properties["Enabled"]?.bool else {
            return ("\(w.name): no State/Pid/Enabled on the bus", [])
        }
        let groups = Set(processes.map(\.pgrp))
        if groups.count > 1 {
            return ("\(w.name): processes in \(groups.count) process groups (two copies): \(processes)",
                    processes.filter { $0.pgrp != Int32(pid) })
        }
        if let intent = intents[w.name], intent != enabled {
            return ("\(w.name): Enabled is \(enabled), but it was \(intent ? "enabled" : "disabled") over the bus", [])
        }
        switch state {
        case "running":
            guard pid > 0 else { return ("\(w.name): running with Pid 0", []) }
            guard let leader = processes.first(where: { $0.pid == Int32(pid) }) else {
                return ("\(w.name): running with Pid \(pid), which is no live process of it (\(processes))", [])
            }
            let strays = processes.filter { $0.pgrp != Int32(pid) }
            if !strays.isEmpty { return ("\(w.name): processes outside its group \(pid): \(strays)", strays) }
            if leader.pgrp != leader.pid { return ("\(w.name): Pid \(pid) does not lead its process group", []) }
            if leader.ppid != daemonPid { return ("\(w.name): Pid \(pid) is not a child of bgworkerd \(daemonPid): \(leader)", []) }
            if !w.leaderCommands.contains(leader.command) { return ("\(w.name): Pid \(pid) runs `\(leader.command)`", []) }
            return (nil, [])
        case "disabled", "backoff", "failed", "stopped", "standby":
            if pid != 0 { return ("\(w.name): \(state) with Pid \(pid)", []) }
            if !processes.isEmpty { return ("\(w.name): \(state), but its processes live: \(processes)", processes) }
            return (nil, [])
        default:  // starting, stopping: under way
            return ("\(w.name): still \(state)", [])
        }
    }

    /// name -> the worker object's properties (`GetManagedObjects`: one call, one moment).
    /// Retries, within the deadline, while the bus or the daemon is not reachable.
    func managedObjects(deadline: ContinuousClock.Instant) async throws -> [String: [String: BusValue]] {
        while true {
            let result = try await busctl(["--json=short", "call", Self.busName, Self.manager,
                                           "org.freedesktop.DBus.ObjectManager", "GetManagedObjects"])
            if result.status == 0, case .object(let objects)? = try DaemonFixture.decodeReply(result.stdout).first {
                var out: [String: [String: BusValue]] = [:]
                for (_, interfaces) in objects {
                    guard case .object(let byInterface) = interfaces,
                          case .object(let properties)? = byInterface[BgWorkerBus.workerInterface] else { continue }
                    let values = properties.mapValues(\.unwrapped)
                    if let name = values["Name"]?.string { out[name] = values }
                }
                return out
            }
            guard ContinuousClock.now < deadline else {
                throw TestProcessError("GetManagedObjects failed until the deadline: \(result.stderr)")
            }
            try await waitForTheDaemonOnTheBus(timeout: max(deadline - ContinuousClock.now, .milliseconds(1)))
        }
    }

    /// SIGTERM; the daemon exits 0 and every worker process is gone.
    func stopDaemonAndCheckNothingIsLeft() async throws {
        let daemon = try currentDaemon()
        drain?.cancel()
        let status = try await daemon.stop(timeout: .seconds(30))
        self.daemon = nil
        if WaitStatus.exitCode(status) != 0 { finding("bgworkerd exited with wait status \(status) after SIGTERM") }
        let left = await survivors(ourProcesses(), timeout: .seconds(2))
        if !left.isEmpty { finding("after the last SIGTERM, worker processes still live: \(left)") }
        for process in left { kill(process.pid, SIGKILL) }
        // A copy started beside another: the kernel's word, its flock failed (exit 75). Every
        // daemon's log has each exit, also those while the bus was down.
        var doubles: [String: [Substring]] = [:]
        for log in daemonLogs {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n") where line.contains("(exited with status 75)") {
                guard let name = workers.map(\.name).first(where: { line.contains("worker \($0): ") }) else { continue }
                doubles[name, default: []].append(line)
            }
        }
        for (name, lines) in doubles.sorted(by: { $0.key < $1.key }) {
            let cause = orphaned.contains(name)
                ? "an orphan of \(name) was found in this run (above), which held the lock until the test killed it"
                : "no orphan of \(name) was found: a process of its previous copy was still alive when the runner started the next one"
            finding("\(lines.count) start(s) of \(name) found its lock held by another copy of it (exit 75); \(cause); e.g. \(lines.prefix(2).joined(separator: " | "))")
        }
        counts["exit 75 (lock held by another copy)"] = doubles.values.map(\.count).reduce(0, +)
    }

    func finding(_ text: String) {
        print("chaos finding: \(text)")
        findings.append(text)
    }

    var summary: String {
        let took = ContinuousClock.now - started
        let lines = counts.sorted { $0.key < $1.key }.map { "  \($0.key): \($0.value)" }
        return """
            chaos: \(rounds) rounds in \(took), \(signals.count) WorkerStateChanged seen, \(findings.count) finding(s)
            \(lines.joined(separator: "\n"))
            """
    }
}
