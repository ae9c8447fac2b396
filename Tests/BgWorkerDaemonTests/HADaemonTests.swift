import BgWorkerAPI
import BgWorkerCore
import DBus
import Foundation
import Glibc
import Synchronization
import Testing
import TestSupport

// End to end: the real bgworkerd with `[ha]` configured, on a keepalived node's bus or beside
// bgworker-ha-sim, watched by `busctl monitor` and asked with busctl.

/// What a node's daemon announced, in bus order.
struct DaemonHistory: Sendable, CustomStringConvertible {
    var changes: [StateChange] = []
    var roles: [String] = []
    var ended = false

    /// The worker's last announced state; a worker never announced rests in `standby` (it is
    /// enabled and, with HA, starts in role `unknown`).
    func state(_ worker: String) -> String { changes.last { $0.name == worker }?.state ?? "standby" }
    func pid(_ worker: String) -> UInt32 { changes.last { $0.name == worker }?.pid ?? 0 }

    /// Whether the announced states keep "never two processes": a new pid is announced only
    /// after the previous process was announced gone (a state with pid 0: the daemon announces
    /// the next state of a stopped worker, `starting` again included, once its exit is in).
    func violations() -> [String] {
        var live: [String: UInt32] = [:]
        var found: [String] = []
        for change in changes {
            if change.pid == 0 {
                live[change.name] = nil
                continue
            }
            if let other = live[change.name], other != change.pid {
                found.append("\(change.name): \(change) while pid \(other) was not announced gone")
            }
            live[change.name] = change.pid
        }
        return found
    }

    var description: String {
        "roles \(roles); changes:\n" + changes.map { "  \($0)" }.joined(separator: "\n")
    }
}

/// One bgworkerd with HA on a bus, its workers `p` (run-on primary), `s` (secondary) and,
/// with `withAny`, `a` (any): /bin/sh workers that wait for ever.
///
/// Each worker takes an exclusive `flock` named after it as it starts (in this node's folder;
/// its `sleep` does not inherit the descriptor) and writes to `violations` if it cannot: the
/// kernel drops the lock when the shell is gone however it ends, so a second process of the
/// same worker while the first lives is caught by the kernel, not inferred from signals.
final class HADaemonNode: Sendable {
    static let manager = BgWorkerBus.managerPath

    let label: String
    let bus: PrivateBus
    let directory: TemporaryDirectory
    let configPath: String
    let history = WatchedValue(DaemonHistory())
    private let state: Mutex<(daemon: DaemonProcess?, monitor: BusMonitor?, reader: Task<Void, Never>?)>

    init(_ label: String, bus: PrivateBus, ha: String, withAny: Bool = false) async throws {
        self.label = label
        self.bus = bus
        directory = try TemporaryDirectory(prefix: "bgw-ha-\(label)")
        chmod(directory.path, 0o755)
        configPath = directory.file("bgworkerd.toml")
        state = Mutex((nil, nil, nil))
        let locks = directory.path
        let forever = "exec 9>>'\(locks)/lock-'\"$BGWORKER_NAME\"; flock -n 9 || echo \"$BGWORKER_NAME $$\" >>'\(locks)/violations'; sleep 3600 9>&- & wait"
        var text = """
            [daemon]
            state-directory = "\(directory.file("state"))"

            [ha]
            \(ha)

            """
        text += shellWorker("p", forever, extra: "run-on = \"primary\"\nstop-timeout = 3.0")
        text += shellWorker("s", forever, extra: "run-on = \"secondary\"\nstop-timeout = 3.0")
        if withAny { text += shellWorker("a", forever, extra: "run-on = \"any\"\nstop-timeout = 3.0") }
        try text.write(toFile: configPath, atomically: true, encoding: .utf8)
        try await watch()
        let daemon = try await DaemonProcess(bus: bus, configPath: configPath, arguments: ["--runner", "process"],
                                             runtimeDirectory: directory.file("run"))
        state.withLock { $0.daemon = daemon }
    }

    /// Starts (again) the monitor of the daemon's signals on `bus`: after a bus restart the old
    /// monitor has ended with its bus.
    func watch(_ bus: PrivateBus? = nil) async throws {
        let monitor = try await BusMonitor(address: (bus ?? self.bus).unixAddress, matches: [
            "type='signal',interface='\(BgWorkerBus.managerInterface)'",
        ])
        let history = self.history
        let reader = Task {
            while let message = try? await monitor.next(timeout: .seconds(3600)) {
                if let change = StateChange(message) {
                    history.update { $0.changes.append(change) }
                } else if message.member == "HARoleChanged", let role = message.body.first?.string {
                    history.update { $0.roles.append(role) }
                }
            }
        }
        state.withLock { $0.monitor = monitor; $0.reader = reader }
    }

    var daemon: DaemonProcess { get throws { try state.withLock { s in
        guard let d = s.daemon else { throw TestProcessError("no daemon on \(label)") }
        return d
    } } }

    /// Waits until the announced states of the workers are as given.
    @discardableResult
    func waitFor(_ states: [String: String], timeout: Duration = .seconds(30)) async throws -> DaemonHistory {
        try await history.wait("\(label): \(states)", timeout: timeout) { h in
            states.allSatisfy { h.state($0.key) == $0.value }
        }
    }

    /// Waits until the last announced role is `role`.
    @discardableResult
    func waitForRole(_ role: String, timeout: Duration = .seconds(30)) async throws -> DaemonHistory {
        try await history.wait("\(label): HARoleChanged \(role)", timeout: timeout) { $0.roles.last == role }
    }

    /// `busctl --address=<bus> ARGS` (status, stdout, stderr).
    func busctl(_ arguments: [String], bus: PrivateBus? = nil) async throws -> (status: Int32, stdout: String, stderr: String) {
        try await run(["busctl", "--address=\((bus ?? self.bus).unixAddress)"] + arguments)
    }

    /// `HARole` as busctl reads it.
    func haRole(bus: PrivateBus? = nil) async throws -> String {
        let r = try await busctl(["--json=short", "get-property", BgWorkerBus.busName, Self.manager,
                                  BgWorkerBus.managerInterface, "HARole"], bus: bus)
        guard r.status == 0 else { throw TestProcessError("get-property HARole on \(label): \(r.stderr)") }
        let top = try JSONDecoder().decode([String: BusValue].self, from: Data(r.stdout.utf8))
        guard let role = top["data"]?.string else { throw TestProcessError("HARole printed \(r.stdout)") }
        return role
    }

    /// `ListWorkers` as busctl reads it: name -> (state, pid).
    func workers(bus: PrivateBus? = nil) async throws -> [String: (state: String, pid: UInt32)] {
        let r = try await busctl(["--json=short", "call", BgWorkerBus.busName, Self.manager, BgWorkerBus.managerInterface,
                                  "ListWorkers"], bus: bus)
        guard r.status == 0 else { throw TestProcessError("ListWorkers on \(label): \(r.stderr)") }
        var result: [String: (state: String, pid: UInt32)] = [:]
        for row in try DaemonFixture.decodeReply(r.stdout).first?.array ?? [] {
            guard let f = row.array, f.count == 5, let name = f[0].string, let state = f[1].string, let pid = f[3].uint32 else { continue }
            result[name] = (state, pid)
        }
        return result
    }

    /// The workers whose process runs now (ListWorkers says running, and the pid is alive).
    func runningWorkers(bus: PrivateBus? = nil) async throws -> Set<String> {
        var names: Set<String> = []
        for (name, w) in try await workers(bus: bus) where w.state == "running" {
            #expect(w.pid != 0 && kill(pid_t(w.pid), 0) == 0, "\(label): \(name) says running with pid \(w.pid)")
            names.insert(name)
        }
        return names
    }

    func expectNeverTwoProcesses(sourceLocation: SourceLocation = #_sourceLocation) {
        let caught = (try? String(contentsOfFile: directory.file("violations"), encoding: .utf8)) ?? ""
        #expect(caught.isEmpty, "\(label): a worker found its own lock taken: \(caught)", sourceLocation: sourceLocation)
        let h = history.value
        let found = h.violations()
        #expect(found.isEmpty, "\(label): \(found)\n\(h)", sourceLocation: sourceLocation)
    }

    func stop() async {
        let (daemon, monitor, reader) = state.withLock { s in (s.daemon, s.monitor, s.reader) }
        if let daemon { await daemon.process.terminate(grace: .seconds(15)) }
        await monitor?.stop()
        await reader?.value
        directory.remove()
    }

    var log: String { (try? daemon.log) ?? "" }
}

/// Runs `body` with the nodes, stopped afterwards whatever happens (logs printed on failure).
func withNodes(_ nodes: [HADaemonNode], _ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch {
        for node in nodes { print("--- bgworkerd \(node.label) ---\n\(node.log)\n\(node.history.value)") }
        for node in nodes { await node.stop() }
        throw error
    }
    for node in nodes { await node.stop() }
}

// MARK: - keepalived

@Suite(.enabled(if: rootTestsEnabled, "needs root: network namespaces for the keepalived pair"),
       .timeLimit(.minutes(3)))
struct HAKeepalivedDaemonTests {
    func ha(_ node: KeepalivedPair.Node, onLost: String = "stop") -> String {
        "source = \"keepalived\"\ninstance = \"\(node.instancePath)\"\non-lost = \"\(onLost)\""
    }

    /// Node A with `on-lost = keep` and `keep-for`, once its keepalived is MASTER and its primary
    /// worker `p` runs: `body` gets the node and p's pid.
    func withKeepForNode(_ pair: KeepalivedPair, keepFor: Int, _ body: (HADaemonNode, UInt32) async throws -> Void) async throws {
        let a = try await HADaemonNode("A", bus: pair.a.bus, ha: ha(pair.a, onLost: "keep") + "\nkeep-for = \(keepFor)")
        try await withNodes([a]) {
            try await pair.waitForStatus(KeepalivedPair.Status.master, on: pair.a)
            try await a.waitFor(["p": "running", "s": "standby"])
            try await body(a, a.history.value.pid("p"))
        }
    }

    @Test func eachWorkerRunsOnOneNodeAndAFailoverMovesBoth() async throws {
        try await KeepalivedPair.with { pair in
            let a = try await HADaemonNode("A", bus: pair.a.bus, ha: ha(pair.a))
            let b = try await HADaemonNode("B", bus: pair.b.bus, ha: ha(pair.b))
            try await withNodes([a, b]) {
                try await pair.waitForStatus(KeepalivedPair.Status.master, on: pair.a)
                try await a.waitFor(["p": "running", "s": "standby"])
                try await b.waitFor(["p": "standby", "s": "running"])
                #expect(try await a.haRole() == "primary")
                #expect(try await b.haRole() == "secondary")
                #expect(try await a.runningWorkers() == ["p"])
                #expect(try await b.runningWorkers() == ["s"])
                // (Whether s started as "daemon started" or "HA role secondary" depends on whether
                // the role was read before the daemon started its workers.)

                // SIGTERM to the master's keepalived: B becomes primary, A is unknown (on-lost stop).
                let oldP = a.history.value.pid("p")
                try await pair.stopKeepalived(on: pair.a)
                try await b.waitFor(["p": "running", "s": "standby"])
                try await a.waitFor(["p": "standby", "s": "standby"])
                #expect(try await a.haRole() == "unknown")
                #expect(try await b.haRole() == "primary")
                #expect(try await a.runningWorkers() == [])
                #expect(try await b.runningWorkers() == ["p"])
                #expect(kill(pid_t(oldP), 0) != 0, "A's p (pid \(oldP)) is gone")
                let bChanges = b.history.value.changes
                #expect(bChanges.contains { $0.name == "s" && $0.state == "stopping" && $0.reason == "HA role primary" }, "\(b.history.value)")
                #expect(bChanges.contains { $0.name == "p" && $0.state == "starting" && $0.reason == "HA role primary" }, "\(b.history.value)")
                #expect(a.history.value.changes.contains { $0.name == "p" && $0.state == "stopping" && $0.reason == "HA role unknown" },
                        "\(a.history.value)")
                #expect(a.history.value.roles.last == "unknown" && b.history.value.roles.last == "primary")
                a.expectNeverTwoProcesses()
                b.expectNeverTwoProcesses()
            }
        }
    }

    @Test func keepalivedStoppedGivesUnknownAndOnLostApplies() async throws {
        try await KeepalivedPair.with { pair in
            // A stops its workers when the role is lost, B keeps them.
            let a = try await HADaemonNode("A", bus: pair.a.bus, ha: ha(pair.a, onLost: "stop"))
            let b = try await HADaemonNode("B", bus: pair.b.bus, ha: ha(pair.b, onLost: "keep"))
            try await withNodes([a, b]) {
                try await pair.waitForStatus(KeepalivedPair.Status.master, on: pair.a)
                try await a.waitFor(["p": "running", "s": "standby"])
                try await b.waitFor(["p": "standby", "s": "running"])
                let sOnB = b.history.value.pid("s")

                // keep: B's role is unknown, and its secondary worker goes on, the same process.
                try await pair.stopKeepalived(on: pair.b)
                try await b.waitForRole("unknown")
                #expect(try await b.haRole() == "unknown")
                let bWorkers = try await b.workers()
                #expect(bWorkers["s"]?.state == "running" && bWorkers["s"]?.pid == sOnB, "\(bWorkers)")
                #expect(try await a.haRole() == "primary")

                // stop: A's role is unknown, its primary worker stops.
                try await pair.stopKeepalived(on: pair.a)
                try await a.waitForRole("unknown")
                try await a.waitFor(["p": "standby", "s": "standby"])
                #expect(try await a.runningWorkers() == [])
                #expect(a.history.value.changes.last { $0.name == "p" }?.reason == "HA role unknown", "\(a.history.value)")
                #expect(try await b.runningWorkers() == ["s"])
                a.expectNeverTwoProcesses()
                b.expectNeverTwoProcesses()
            }
        }
    }

    /// `on-lost = keep` with `keep-for = 2`: the primary's keepalived is killed (a crash, no
    /// goodbye), its role is `unknown`, its primary worker goes on, and stops about 2 s later.
    @Test func keepForEndsTheKeepAfterItsSeconds() async throws {
        try await KeepalivedPair.with { pair in
            try await withKeepForNode(pair, keepFor: 2) { a, pid in
                let killedAt = ContinuousClock.now
                try await pair.stopKeepalived(on: pair.a, signal: SIGKILL)
                let lost = try await a.waitForRole("unknown")
                #expect(lost.state("p") == "running" && lost.pid("p") == pid, "kept at first: \(lost)")
                let stopped = try await a.history.wait("A: p stops", timeout: .seconds(10)) { $0.state("p") != "running" }
                let after = ContinuousClock.now - killedAt
                let stopping = try #require(stopped.changes.last { $0.name == "p" })
                #expect(stopping.state == "stopping" && stopping.pid == pid && stopping.reason == "HA role unknown for 2 s (keep-for)",
                        "\(stopped)")
                // The timer runs from the role's loss, which follows the kill within milliseconds.
                #expect(after >= .milliseconds(1900) && after < .seconds(4), "p stopped \(after) after the kill")
                try await a.waitFor(["p": "standby"])
                try await waitForProcessExit(pid: pid_t(pid))
                #expect(try await a.haRole() == "unknown")
                a.expectNeverTwoProcesses()
                try await a.daemon.stop()
                #expect(a.log.contains("([ha] keep-for): role primary no longer kept"), "\(a.log)")
            }
        }
    }

    /// `keep-for = 8`, and keepalived is back as MASTER before the 8 s are over: nothing stops,
    /// the same process runs throughout, and the (cancelled) deadline passes without effect.
    /// 8 s, not 2: a keepalived restart took over 2 s in a loaded CI run, and the test is about
    /// the cancelled deadline, not about how fast keepalived starts.
    /// keepalived comes back as address owner (priority 255, `state MASTER`), which it enters at
    /// once; at the usual priority it would come back through BACKUP, which is `secondary`.
    @Test func keepForRoleBackInTimeStopsNothing() async throws {
        let keepFor = 8
        try await KeepalivedPair.with { pair in
            try await withKeepForNode(pair, keepFor: keepFor) { a, pid in
                let owner = pair.configuration(for: pair.a)
                    .replacingOccurrences(of: "state BACKUP", with: "state MASTER")
                    .replacingOccurrences(of: "priority \(pair.a.priority)", with: "priority 255")
                try owner.write(toFile: pair.a.configPath, atomically: true, encoding: .utf8)
                let seenBefore = a.history.value.changes.count
                let killedAt = ContinuousClock.now
                try await pair.stopKeepalived(on: pair.a, signal: SIGKILL)
                try await a.waitForRole("unknown")
                try await pair.startKeepalived(on: pair.a)
                let back = try await a.waitForRole("primary")
                let backAfter = ContinuousClock.now - killedAt
                try #require(backAfter < .seconds(keepFor), "keepalived was back only after \(backAfter)")
                #expect(Array(back.roles.suffix(2)) == ["unknown", "primary"], "\(back)")
                // Past the deadline (with a margin), p has not moved.
                let moved = try? await a.history.wait("A: p leaves running", timeout: .seconds(keepFor) - backAfter + .seconds(1)) {
                    $0.state("p") != "running"
                }
                #expect(moved == nil, "p moved: \(String(describing: moved))")
                #expect(a.history.value.changes.dropFirst(seenBefore).isEmpty, "\(a.history.value)")
                let workers = try await a.workers()
                #expect(workers["p"]?.state == "running" && workers["p"]?.pid == pid, "\(workers)")
                a.expectNeverTwoProcesses()
            }
        }
    }

    @Test func keepalivedStartedAfterTheDaemonIsFollowed() async throws {
        try await KeepalivedPair.with(startKeepalived: false) { pair in
            let a = try await HADaemonNode("A", bus: pair.a.bus, ha: ha(pair.a))
            let b = try await HADaemonNode("B", bus: pair.b.bus, ha: ha(pair.b))
            try await withNodes([a, b]) {
                #expect(try await a.haRole() == "unknown")
                #expect(try await b.haRole() == "unknown")
                #expect(try await a.runningWorkers() == [])
                #expect(try await b.runningWorkers() == [])
                try await pair.startKeepalived(on: pair.a)
                try await pair.startKeepalived(on: pair.b)
                try await a.waitFor(["p": "running", "s": "standby"])
                try await b.waitFor(["p": "standby", "s": "running"])
                try await a.waitForRole("primary")
                try await b.waitForRole("secondary")
                a.expectNeverTwoProcesses()
                b.expectNeverTwoProcesses()
            }
        }
    }

    @Test func aForgedVrrpStatusChangeIsIgnored() async throws {
        try await KeepalivedPair.with { pair in
            let b = try await HADaemonNode("B", bus: pair.b.bus, ha: ha(pair.b))
            try await withNodes([b]) {
                try await pair.waitForStatus(KeepalivedPair.Status.master, on: pair.a)
                try await b.waitFor(["p": "standby", "s": "running"])
                try await b.waitForRole("secondary")
                let before = b.history.value
                // busctl, not keepalived, claims MASTER on B's bus.
                let forged = try await b.busctl(["emit", pair.b.instancePath, "org.keepalived.Vrrp1.Instance",
                                                 "VrrpStatusChange", "u", "2"])
                #expect(forged.status == 0, "\(forged.stderr)")
                // keepalived's own goodbye comes after the forgery (busctl has exited; the bus
                // keeps the order in which it got them): what the daemon did in between shows.
                try await pair.stopKeepalived(on: pair.b)
                let after = try await b.waitForRole("unknown")
                #expect(Array(after.roles.dropFirst(before.roles.count)) == ["unknown"], "\(after)")
                #expect(!after.changes.contains { $0.name == "p" && $0.state != "standby" }, "\(after)")
                // The daemon writes its log from a thread of its own; at exit it has written all.
                try await b.daemon.stop()
                #expect(b.log.contains("ignored VrrpStatusChange from :"), "the forgery is logged")
            }
        }
    }
}

// MARK: - bgworker-ha-sim

/// bgworker-ha-sim as a child, its standard input a named pipe the test writes roles into.
final class HASimProcess: Sendable {
    let process: ChildProcess
    let output = WatchedValue<[String]>([])
    private let input: Int32
    private let directory: TemporaryDirectory
    private let stopped = Mutex(false)

    init(bus: PrivateBus, role: String) async throws {
        directory = try TemporaryDirectory(prefix: "bgw-sim")
        let fifo = directory.file("stdin")
        guard mkfifo(fifo, 0o600) == 0 else { throw TestProcessError("mkfifo: \(errno)") }
        // Read-write, so the open does not wait for a reader and the pipe has no end until closed.
        input = open(fifo, O_RDWR | O_CLOEXEC)
        process = try ChildProcess(["/bin/sh", "-c", "exec \"$0\" \"$@\" < \"$BGW_FIFO\"", builtExecutablePath("bgworker-ha-sim"),
                                    "--bus", bus.unixAddress, "--role", role],
                                   extraEnvironment: ["BGW_FIFO": fifo], captureStdout: true, captureStderr: false)
        let process = self.process, output = self.output
        Task {
            while let line = try? await process.readLine(timeout: .seconds(3600)) { output.update { $0.append(line) } }
            output.finish("bgworker-ha-sim closed its output")
        }
        try await output.wait("bgworker-ha-sim ready", timeout: .seconds(20)) { $0.contains { $0.hasPrefix("ready ") } }
    }

    /// Writes the lines at once (one write: a burst) and waits until the simulator has sent the last.
    func send(_ roles: [String]) async throws {
        let before = output.value.count
        let bytes = Array(roles.map { $0 + "\n" }.joined().utf8)
        _ = bytes.withUnsafeBytes { write(input, $0.baseAddress, $0.count) }
        let last = "role \(roles.last ?? "")"
        try await output.wait(last) { Array($0.dropFirst(before)).filter { $0.hasPrefix("role ") }.count == roles.count }
    }

    /// Stops it (once; later calls do nothing).
    func stop() async {
        guard stopped.withLock({ done in defer { done = true }; return !done }) else { return }
        await process.terminate(grace: .seconds(5))
        close(input)
        directory.remove()
    }
}

@Suite(.timeLimit(.minutes(2)))
struct HASimDaemonTests {
    static let dbusSource = "source = \"dbus\""

    /// Runs `body` with a bus, bgworker-ha-sim on it (starting as `role`) and a bgworkerd that
    /// follows it; all are stopped afterwards, whatever happens.
    func withSimulator(role: String, withAny: Bool = false,
                       _ body: (PrivateBus, HASimProcess, HADaemonNode) async throws -> Void) async throws {
        let bus = try await PrivateBus()
        do {
            let sim = try await HASimProcess(bus: bus, role: role)
            do {
                let node = try await HADaemonNode("sim", bus: bus, ha: Self.dbusSource, withAny: withAny)
                try await withNodes([node]) { try await body(bus, sim, node) }
            } catch {
                await sim.stop()
                throw error
            }
            await sim.stop()
        } catch {
            await bus.stop()
            throw error
        }
        await bus.stop()
    }

    @Test func everyRoleOfTheSimulator() async throws {
        try await withSimulator(role: "secondary", withAny: true) { _, sim, node in
            try await node.waitFor(["p": "standby", "s": "running", "a": "running"])
            #expect(try await node.haRole() == "secondary")
            let anyPid = node.history.value.pid("a")
            try await sim.send(["primary"])
            try await node.waitFor(["p": "running", "s": "standby"])
            #expect(try await node.haRole() == "primary")
            #expect(try await node.runningWorkers() == ["p", "a"])
            try await sim.send(["not-a-role"])
            try await node.waitForRole("unknown")
            try await node.waitFor(["p": "standby", "s": "standby"])
            #expect(try await node.runningWorkers() == ["a"])
            #expect(node.history.value.changes.last { $0.name == "p" }?.reason == "HA role unknown")
            try await sim.send(["secondary"])
            try await node.waitFor(["p": "standby", "s": "running"])
            #expect(node.history.value.roles == ["secondary", "primary", "unknown", "secondary"], "\(node.history.value)")
            #expect(node.history.value.pid("a") == anyPid && node.history.value.changes.filter { $0.name == "a" }.count <= 2,
                    "the `any` worker ran throughout: \(node.history.value)")
            node.expectNeverTwoProcesses()
        }
    }

    @Test func aBurstEndsInTheLastRoleAndNeverTwoProcesses() async throws {
        try await withSimulator(role: "secondary") { _, sim, node in
            try await node.waitFor(["p": "standby", "s": "running"])
            let burst = ["primary", "secondary", "primary"]
            try await sim.send(burst)
            // bgworkerd applies and announces every change, in order (docs/ha.md).
            // Deadlines for a sanitizer build at load 600 (the 10 s default ran out once under TSan).
            try await node.history.wait("the burst announced", timeout: .seconds(30)) { $0.roles == ["secondary"] + burst }
            try await node.waitFor(["p": "running", "s": "standby"])
            #expect(try await node.runningWorkers() == ["p"])
            node.expectNeverTwoProcesses()
            // A longer one, from primary, ending in secondary.
            let long = (0..<20).map { $0 % 2 == 0 ? "secondary" : "primary" } + ["secondary"]
            try await sim.send(long)
            try await node.history.wait("the long burst announced", timeout: .seconds(60)) {
                $0.roles.count == 4 + long.count && $0.roles.last == "secondary"
            }
            try await node.waitFor(["p": "standby", "s": "running"])
            #expect(try await node.runningWorkers() == ["s"])
            node.expectNeverTwoProcesses()
        }
    }

    @Test func theManagerRestartingIsFollowed() async throws {
        try await withSimulator(role: "primary") { bus, sim, node in
            try await node.waitFor(["p": "running", "s": "standby"])
            await sim.stop()
            try await node.waitForRole("unknown")
            try await node.waitFor(["p": "standby", "s": "standby"])
            let again = try await HASimProcess(bus: bus, role: "secondary")
            try await node.waitForRole("secondary")
            try await node.waitFor(["p": "standby", "s": "running"])
            #expect(node.history.value.roles == ["primary", "unknown", "secondary"])
            node.expectNeverTwoProcesses()
            await again.stop()
        }
    }

    @Test func theBusRestartedUnderTheDaemon() async throws {
        try await withSimulator(role: "primary") { bus, sim, node in
            try await node.waitFor(["p": "running", "s": "standby"])
            let oldP = node.history.value.pid("p")
            await bus.kill()
            await sim.stop()
            // The daemon's connection is down: role unknown, so p stops (on-lost stop). Nothing
            // shows on a bus meanwhile; the process does.
            try await waitForProcessExit(pid: pid_t(oldP), timeout: .seconds(20))

            // A new bus on the same address, a new manager; the daemon reconnects and reads again.
            let restarted = try await PrivateBus(socketPath: bus.socketPath)
            do {
                try await expectTheDaemonBack(on: restarted, node: node, oldP: oldP)
            } catch {
                await restarted.stop()
                throw error
            }
            await restarted.stop()
        }
    }

    /// After a bus restart: the daemon takes its name again, reads the role from a new manager,
    /// answers clients, and runs p again (a new process).
    func expectTheDaemonBack(on restarted: PrivateBus, node: HADaemonNode, oldP: UInt32) async throws {
        let watcher = try await DBusConnection.connect(.address(restarted.address))
        defer { watcher.close() }
        let daemonOwner = try await watcher.watchNameOwner(BgWorkerBus.busName)
        let again = try await HASimProcess(bus: restarted, role: "primary")
        if daemonOwner.initialOwner == nil {
            _ = try await waitFor("bgworkerd back on the bus", in: daemonOwner, timeout: .seconds(20)) {
                if case .ownerChanged(_, let new) = $0 { return new != nil }
                return false
            }
        }
        // HARole primary again, read from the new manager: subscribe, then read.
        let changes = try await watcher.signals(MatchRule(path: try ObjectPath(HADaemonNode.manager),
                                                          interface: "org.freedesktop.DBus.Properties",
                                                          member: "PropertiesChanged"))
        if try await node.haRole(bus: restarted) != "primary" {
            _ = try await waitFor("HARole primary", in: changes, timeout: .seconds(20)) { signal in
                signal.arguments.count == 3 && signal.arguments[1].stringKeyedDictionary?["HARole"]?.unwrappingVariant.stringValue == "primary"
            }
        }
        #expect(try await node.haRole(bus: restarted) == "primary")
        // Clients can call again, and p runs again: a new process.
        let pSubscription = try await watcher.signals(MatchRule(interface: BgWorkerBus.managerInterface, member: "WorkerStateChanged"))
        let workers = try await node.workers(bus: restarted)
        if workers["p"]?.state != "running" {
            _ = try await waitFor("p running", in: pSubscription, timeout: .seconds(20)) { signal in
                signal.arguments.first?.stringValue == "p" && signal.arguments[1].stringValue == "running"
            }
        }
        let now = try await node.workers(bus: restarted)
        #expect(now["p"]?.state == "running" && now["p"]?.pid != oldP && now["s"]?.state == "standby", "\(now)")
        #expect(try await node.runningWorkers(bus: restarted) == ["p"])
        await again.stop()
    }
}
