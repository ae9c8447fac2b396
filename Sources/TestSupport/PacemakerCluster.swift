import Foundation
import Glibc
import Synchronization

/// Three real Pacemaker/Corosync nodes on this host, each following its own bgworkerd through the
/// project's OCF agent (`config/ocf/role`, as `ocf:bgworker:role`, a promotable clone with
/// `promoted-max=1`). `scripts/lib/pacemaker-cluster.sh` builds the nodes: node N is a network
/// namespace plus persistent mount and UTS namespaces with its own `/run`; this fixture gives
/// each node a `dbus-daemon` whose socket is that node's `/run/dbus/system_bus_socket` (so the
/// agent, run by the node's pacemaker-execd, reaches it as the system bus) and a bgworkerd on it
/// with `[ha] source = "pacemaker"`.
///
/// Each bgworkerd runs a primary worker `p` and a secondary worker `s`; every worker appends
/// `<node> <worker> start|stop <CLOCK_REALTIME ns>` to one shared file as it starts and as it
/// gets SIGTERM, so `intervals` and `overlap` measure exactly how long two nodes ran `p` at once.
/// Roles and worker states are followed from each node's bus signals (`busctl monitor`), so
/// waits follow events. Needs root. Use `PacemakerCluster.with { cluster in ... }`.
public final class PacemakerCluster: Sendable {
    /// What one node's bus showed of its bgworkerd.
    public struct History: Sendable, CustomStringConvertible {
        /// `HARoleChanged` arguments in order; "gone" where the fixture killed the daemon.
        public var roles: [String] = []
        /// The last announced state of each worker.
        public var states: [String: String] = [:]
        public var role: String { roles.last ?? "unknown" }
        public var description: String { "roles \(roles), states \(states)" }
    }

    public final class Node: Sendable {
        public let number: Int
        public var name: String { "node\(number)" }
        public let bus: PrivateBus
        public let configPath: String
        public let history = WatchedValue(History())
        let directory: TemporaryDirectory
        let daemon = Mutex<DaemonProcess?>(nil)
        let monitor: BusMonitor
        let reader: Task<Void, Never>

        init(number: Int, bus: PrivateBus, directory: TemporaryDirectory, monitor: BusMonitor) {
            self.number = number
            self.bus = bus
            self.directory = directory
            self.monitor = monitor
            configPath = directory.file("bgworkerd.toml")
            let history = self.history
            reader = Task {
                while let message = try? await monitor.next(timeout: .seconds(86_400)) {
                    switch message.member {
                    case "HARoleChanged":
                        if let role = message.body.first?.string { history.update { $0.roles.append(role) } }
                    case "WorkerStateChanged":
                        if message.body.count >= 2, let name = message.body[0].string, let state = message.body[1].string {
                            history.update { $0.states[name] = state }
                        }
                    default:
                        continue
                    }
                }
            }
        }

        /// The node's bgworkerd, if it runs.
        public var bgworkerd: DaemonProcess? { daemon.withLock { $0 } }
        public var log: String { bgworkerd?.log ?? "" }
    }

    /// One run of worker `worker` on `node`, in seconds of CLOCK_REALTIME; `end` nil while it runs.
    public struct Interval: Sendable, CustomStringConvertible {
        public var node: String
        public var worker: String
        public var start: Double
        public var end: Double?
        public var description: String { "\(node) \(worker) \(start)...\(end.map { "\($0)" } ?? "now")" }
    }

    /// One call of the agent on a node, as the test wrapper recorded it (CLOCK_REALTIME seconds).
    public struct AgentCall: Sendable, CustomStringConvertible {
        public var action: String
        public var start: Double
        public var end: Double?
        public var status: Int?
        public var description: String { "\(action) \(start)...\(end.map { "\($0)" } ?? "running") rc \(status.map(String.init) ?? "-")" }
    }

    public let nodes: [Node]
    public let directory: TemporaryDirectory
    public let lease: Double
    public let monitorPromoted: Double
    public let monitorUnpromoted: Double
    let namespacePrefix: String
    private let tornDown = Mutex(false)

    var script: String { repositoryRoot() + "/scripts/lib/pacemaker-cluster.sh" }
    var environment: [String: String] {
        ["PCMK_DIR": directory.path, "PCMK_NS": namespacePrefix, "AGENT": repositoryRoot() + "/config/ocf/role",
         "MONITOR_PROMOTED_MS": String(Int(monitorPromoted * 1000)), "MONITOR_UNPROMOTED_MS": String(Int(monitorUnpromoted * 1000))]
    }
    public var intervalsPath: String { directory.file("intervals") }

    private init(nodes: [Node], directory: TemporaryDirectory, lease: Double, monitorPromoted: Double,
                 monitorUnpromoted: Double, namespacePrefix: String) {
        self.nodes = nodes
        self.directory = directory
        self.lease = lease
        self.monitorPromoted = monitorPromoted
        self.monitorUnpromoted = monitorUnpromoted
        self.namespacePrefix = namespacePrefix
    }

    /// Builds the nodes, starts each node's bus and bgworkerd (role `unknown`), then corosync and
    /// Pacemaker, and creates the promotable clone. Does not wait for a promotion.
    public static func start(lease: Double = 6, monitorPromoted: Double = 2, monitorUnpromoted: Double = 3) async throws -> PacemakerCluster {
        let directory = try TemporaryDirectory(prefix: "bgw-pcmk")
        let prefix = "bgwpc\(uniqueID(4))"
        let base = ["PCMK_DIR": directory.path, "PCMK_NS": prefix, "AGENT": repositoryRoot() + "/config/ocf/role"]
        let script = repositoryRoot() + "/scripts/lib/pacemaker-cluster.sh"
        var nodes: [Node] = []
        do {
            try await runScript(script, ["prepare"], base, timeout: .seconds(60))
            for number in 1...3 {
                let nodeDirectory = try TemporaryDirectory(prefix: "bgw-pcmk-node\(number)")
                let socket = "\(directory.path)/nodes/node\(number)/run/dbus/system_bus_socket"
                let bus = try await PrivateBus(socketPath: socket, directory: nodeDirectory)
                let monitor = try await BusMonitor(address: bus.unixAddress, matches: ["type='signal',interface='org.example.BgWorker'"])
                nodes.append(Node(number: number, bus: bus, directory: nodeDirectory, monitor: monitor))
            }
        } catch {
            await teardown(nodes: nodes, script: script, environment: base, directory: directory)
            throw error
        }
        let cluster = PacemakerCluster(nodes: nodes, directory: directory, lease: lease, monitorPromoted: monitorPromoted,
                                       monitorUnpromoted: monitorUnpromoted, namespacePrefix: prefix)
        do {
            for node in nodes {
                try cluster.configuration(for: node).write(toFile: node.configPath, atomically: true, encoding: .utf8)
                try await cluster.startDaemon(on: node)
            }
            try await runScript(script, ["start"], cluster.environment, timeout: .seconds(90))
            try await runScript(script, ["configure"], cluster.environment, timeout: .seconds(30))
        } catch {
            await cluster.teardown()
            throw error
        }
        return cluster
    }

    /// Starts a cluster, runs `body`, and tears it down whether `body` returns or throws (the
    /// logs of every node are printed when it throws).
    public static func with<T: Sendable>(
        lease: Double = 6, monitorPromoted: Double = 2, monitorUnpromoted: Double = 3, _ body: (PacemakerCluster) async throws -> T
    ) async throws -> T {
        let cluster = try await start(lease: lease, monitorPromoted: monitorPromoted, monitorUnpromoted: monitorUnpromoted)
        return try await withCleanup(cluster, cleanup: { await $0.teardown() }) { cluster in
            do { return try await body(cluster) } catch {
                await cluster.printDiagnostics()
                throw error
            }
        }
    }

    /// bgworkerd's configuration on `node`: the two workers record their runs in `intervals`.
    public func configuration(for node: Node) -> String {
        func worker(_ name: String, _ runOn: String) -> String {
            let file = intervalsPath
            let record = { (what: String) in "echo \(node.name) \(name) \(what) $(date +%s%N) >>\(file)" }
            // The trap records the stop as SIGTERM arrives; `wait` returns at once for it.
            let script = "\(record("start")); trap '\(record("stop")); exit 0' TERM; sleep 3600 & wait"
            let escaped = script.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            return """
                [worker.\(name)]
                exec = ["/bin/sh", "-c", "\(escaped)"]
                run-on = "\(runOn)"
                stop-timeout = 3.0

                """
        }
        return """
            [daemon]
            state-directory = "\(node.directory.file("state"))"

            [ha]
            source = "pacemaker"
            lease = \(formatted(lease))

            """ + worker("p", "primary") + worker("s", "secondary")
    }

    /// Starts bgworkerd on `node` (again) and waits for its READY=1.
    public func startDaemon(on node: Node) async throws {
        let daemon = try await DaemonProcess(bus: node.bus, configPath: node.configPath, arguments: ["--runner", "process"],
                                             runtimeDirectory: node.directory.file("run"),
                                             logPath: node.directory.file("bgworkerd.log"))
        node.daemon.withLock { $0 = daemon }
    }

    /// SIGKILLs bgworkerd on `node` and waits until it is gone (its process-runner workers die with
    /// it). The node's history records the role as "gone".
    public func killDaemon(on node: Node) async throws {
        guard let daemon = node.daemon.withLock({ d in defer { d = nil }; return d }) else { return }
        try await daemon.stop(signal: SIGKILL, timeout: .seconds(10))
        node.history.update { $0.roles.append("gone") }
    }

    /// A command inside `node`'s namespaces (`nsenter`).
    public func exec(_ node: Node, _ argv: [String], timeout: Duration = .seconds(30)) async throws -> (status: Int32, stdout: String, stderr: String) {
        try await run([script, "exec", "\(node.number)"] + argv, environment: environment, timeout: timeout)
    }

    /// A command inside `node`'s namespaces that must succeed; its output.
    @discardableResult
    public func execChecked(_ node: Node, _ argv: [String], timeout: Duration = .seconds(30)) async throws -> String {
        let r = try await exec(node, argv, timeout: timeout)
        guard r.status == 0 else { throw TestProcessError("\(node.name): \(argv.joined(separator: " ")) exited \(r.status): \(r.stderr)") }
        return r.stdout
    }

    /// SIGKILL of corosync and pacemakerd on `node` (its subdaemons lose the cluster).
    public func killStack(on node: Node) async throws { try await runScript(script, ["kill9", "\(node.number)"], environment) }
    /// Takes `node`'s link down: it is cut off from the other two.
    public func isolate(_ node: Node) async throws { try await runScript(script, ["isolate", "\(node.number)"], environment) }
    public func rejoin(_ node: Node) async throws { try await runScript(script, ["rejoin", "\(node.number)"], environment) }

    /// Waits until exactly one node announced `primary` and the other two `secondary`, with the
    /// workers of each role running; returns the primary node.
    @discardableResult
    public func waitForOnePrimary(among candidates: [Node]? = nil, timeout: Duration = .seconds(60)) async throws -> Node {
        let members = candidates ?? nodes
        try await withThrowingTaskGroup(of: Void.self) { group in
            for node in members {
                group.addTask {
                    try await node.history.wait("\(node.name): a role with its workers running", timeout: timeout) { h in
                        (h.role == "primary" && h.states["p"] == "running") || (h.role == "secondary" && h.states["s"] == "running")
                    }
                }
            }
            try await group.waitForAll()
        }
        // Each node has a role; now one of them must be the only primary (a move may still run).
        let deadline = ContinuousClock.now + timeout
        while true {
            let primaries = members.filter { $0.history.value.role == "primary" }
            if primaries.count == 1, members.allSatisfy({ ["primary", "secondary"].contains($0.history.value.role) }) {
                return primaries[0]
            }
            guard ContinuousClock.now < deadline else {
                throw TestProcessError("no single primary: \(members.map { "\($0.name) \($0.history.value)" })")
            }
            // Wait for the next role change of any node (an event), not for time.
            let before = members.map { $0.history.value.roles.count }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (node, count) in zip(members, before) {
                    group.addTask {
                        try await node.history.wait("\(node.name): a role change", timeout: deadline - ContinuousClock.now) {
                            $0.roles.count > count
                        }
                    }
                }
                try await group.next()
                group.cancelAll()
            }
        }
    }

    /// Waits until `node` announced `role` (and, for primary/secondary, that role's worker runs).
    @discardableResult
    public func waitForRole(_ role: String, on node: Node, timeout: Duration = .seconds(60)) async throws -> History {
        try await node.history.wait("\(node.name): role \(role)", timeout: timeout) { h in
            guard h.role == role else { return false }
            switch role {
            case "primary": return h.states["p"] == "running"
            case "secondary": return h.states["s"] == "running"
            default: return h.states["p"] != "running" && h.states["p"] != "stopping"
            }
        }
    }

    /// Every recorded run of every worker, in order of start.
    public var intervals: [Interval] {
        let text = (try? String(contentsOfFile: intervalsPath, encoding: .utf8)) ?? ""
        var open: [String: Interval] = [:]
        var done: [Interval] = []
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ").map(String.init)
            guard f.count == 4, let ns = Double(f[3]) else { continue }
            let key = f[0] + " " + f[1]
            if f[2] == "start" {
                if let unfinished = open[key] { done.append(unfinished) }
                open[key] = Interval(node: f[0], worker: f[1], start: ns / 1e9)
            } else if var interval = open.removeValue(forKey: key) {
                interval.end = ns / 1e9
                done.append(interval)
            }
        }
        return (done + open.values).sorted { $0.start < $1.start }
    }

    /// The longest time (seconds) during which `worker` ran on two nodes at once, over all runs
    /// recorded so far (a run still going counts until now).
    public func longestOverlap(of worker: String = "p") -> Double {
        let now = Date().timeIntervalSince1970
        let runs = intervals.filter { $0.worker == worker }
        var longest = 0.0
        for (i, a) in runs.enumerated() {
            for b in runs[(i + 1)...] where a.node != b.node {
                longest = max(longest, min(a.end ?? now, b.end ?? now) - max(a.start, b.start))
            }
        }
        return longest
    }

    /// Every call of the agent on `node` so far, in order (meta-data is not recorded).
    public func agentCalls(on node: Node) -> [AgentCall] {
        let path = "\(directory.path)/nodes/\(node.name)/run/bgworker-test/agent-calls"
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        var calls: [AgentCall] = []
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ").map(String.init)
            guard f.count >= 3, let ns = Double(f[2]) else { continue }
            if f[1] == "start" {
                calls.append(AgentCall(action: f[0], start: ns / 1e9))
            } else if let i = calls.lastIndex(where: { $0.action == f[0] && $0.end == nil }) {
                calls[i].end = ns / 1e9
                calls[i].status = f.count > 3 ? Int(f[3]) : nil
            }
        }
        return calls
    }

    /// When (CLOCK_REALTIME seconds) `node`'s run of `worker` that spans `instant` ended, and when
    /// another node's first run of it after `instant` started: the figures of a failover.
    public func handover(of worker: String = "p", from node: Node, at instant: Double) -> (oldEnd: Double?, newStart: Double?) {
        let runs = intervals.filter { $0.worker == worker }
        // The run still going at `instant` (its start record may come after bgworkerd said running).
        let old = runs.last { $0.node == node.name && ($0.end ?? .infinity) >= instant }
        let new = runs.first { $0.node != node.name && $0.start > instant && $0.start > (old?.start ?? 0) }
        return (old?.end, new?.start)
    }

    /// `crm_mon -1` from the first node that answers, for failure messages.
    public func status() async -> String {
        for node in nodes {
            if let r = try? await exec(node, ["crm_mon", "-1"], timeout: .seconds(10)), r.status == 0 { return r.stdout }
        }
        return "no node answers crm_mon"
    }

    public func printDiagnostics() async {
        print("--- cluster ---\n\(await status())\n--- intervals ---\n\(intervals.map(\.description).joined(separator: "\n"))")
        for node in nodes {
            print("--- \(node.name): \(node.history.value) ---\n\(node.log)")
            let agentLog = (try? String(contentsOfFile: "\(directory.path)/nodes/\(node.name)/log/pacemaker/pacemaker.log", encoding: .utf8)) ?? ""
            print(agentLog.split(separator: "\n").filter { $0.contains("role") }.suffix(30).joined(separator: "\n"))
        }
    }

    /// Stops Pacemaker (it demotes and stops the clone), corosync, the daemons and buses, and
    /// removes the namespaces. Safe to call more than once; never throws.
    public func teardown() async {
        guard tornDown.withLock({ done in defer { done = true }; return !done }) else { return }
        await Self.teardown(nodes: nodes, script: script, environment: environment, directory: directory)
    }

    private static func teardown(nodes: [Node], script: String, environment: [String: String], directory: TemporaryDirectory) async {
        _ = try? await run([script, "down"], environment: environment, timeout: .seconds(120))
        for node in nodes {
            if let daemon = node.bgworkerd { await daemon.process.terminate(grace: .seconds(10)) }
            await node.monitor.stop()
            await node.reader.value
            await node.bus.stop()
            node.directory.remove()
        }
        directory.remove()
    }

    private static func runScript(_ script: String, _ arguments: [String], _ environment: [String: String],
                                  timeout: Duration = .seconds(30)) async throws {
        let r = try await run([script] + arguments, environment: environment, timeout: timeout)
        guard r.status == 0 else {
            throw TestProcessError("pacemaker-cluster.sh \(arguments.joined(separator: " ")) exited \(r.status): \(r.stdout)\(r.stderr)")
        }
    }

    private func runScript(_ script: String, _ arguments: [String], _ environment: [String: String]) async throws {
        try await Self.runScript(script, arguments, environment)
    }
}

private func formatted(_ seconds: Double) -> String {
    seconds == seconds.rounded() ? String(Int(seconds)) : String(seconds)
}
