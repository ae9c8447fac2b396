import CShims
import Foundation
import Glibc
import Synchronization

/// Two real keepalived VRRP nodes, A and B, as two hosts: two network namespaces joined by a veth
/// pair (`eth0` in each, 198.18.0.1 and .2; VIP 198.18.0.100; all traffic stays inside), each node
/// with its own `PrivateBus` that keepalived publishes `org.keepalived.Vrrp1` on (`enable_dbus`,
/// `DBUS_SYSTEM_BUS_ADDRESS`). keepalived runs in the foreground as a direct child of the test
/// (`-n -l -D`, own pid files). Node A has priority 150, B 100: A becomes MASTER when both run.
///
/// Every node's bus is watched from the start by a `busctl monitor`, so `waitForStatus` and
/// `waitForMaster` follow keepalived's own `VrrpStatusChange` signals as they come: no sleeps and
/// no polling of properties. `readState` reads the `State` property with busctl.
///
/// Needs root (network namespaces). Names are unique per pair, so pairs run in parallel. Use
/// `KeepalivedPair.with { pair in ... }`, which tears down even when the body throws.
public final class KeepalivedPair: Sendable {
    /// VRRP states as keepalived reports them (`State` property, `VrrpStatusChange` argument).
    public enum Status {
        public static let initializing: UInt32 = 0
        public static let backup: UInt32 = 1
        public static let master: UInt32 = 2
        public static let fault: UInt32 = 3
        public static let stopped: UInt32 = 98
    }

    /// What a node's bus has shown of its keepalived so far.
    public struct Observed: Sendable, CustomStringConvertible {
        /// The argument of the last `VrrpStatusChange`; nil before the first and after `VrrpStopped`.
        public var status: UInt32?
        /// Every `VrrpStatusChange` argument, in order.
        public var changes: [UInt32] = []
        /// How many `VrrpStarted` / `VrrpStopped` signals were seen.
        public var started = 0
        public var stopped = 0
        public var description: String {
            "status \(status.map(String.init) ?? "none"), changes \(changes), started \(started), stopped \(stopped)"
        }
    }

    public final class Node: Sendable {
        /// "A" or "B".
        public let name: String
        /// The network namespace (`ip netns`), unique per pair.
        public let namespace: String
        /// The interface inside the namespace; the same on both nodes.
        public let interface = "eth0"
        public let address: String
        public let priority: Int
        /// The node's own system bus; keepalived of this node publishes on it.
        public let bus: PrivateBus
        /// keepalived's configuration file.
        public let configPath: String
        /// The VRRP instance's object path, the `[ha] instance` a daemon on this node would use.
        public var instancePath: String { "/org/keepalived/Vrrp1/Instance/\(interface)/\(KeepalivedPair.virtualRouterID)/IPv4" }
        /// What this node's bus has shown of its keepalived, updated as signals arrive.
        public let observed = WatchedValue(Observed())

        let monitor: BusMonitor
        let keepalived = Mutex<KeepalivedProcess?>(nil)
        let directory: TemporaryDirectory

        init(name: String, namespace: String, address: String, priority: Int, directory: TemporaryDirectory,
             bus: PrivateBus, monitor: BusMonitor) {
            self.name = name
            self.namespace = namespace
            self.address = address
            self.priority = priority
            self.directory = directory
            self.bus = bus
            self.monitor = monitor
            configPath = directory.file("keepalived-\(name).conf")
        }

        /// keepalived's output (`-l -D`), appended across restarts.
        public var logPath: String { directory.file("keepalived-\(name).log") }
        /// keepalived's output so far, for failure messages.
        public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

        /// The running keepalived's pid, or nil.
        public var keepalivedPid: pid_t? { keepalived.withLock { $0?.launcher.hasExited == false ? $0?.pid : nil } }
    }

    /// keepalived as PID 1 of a PID namespace of its own (`unshare --pid --fork --kill-child`), so
    /// that when it dies, even by SIGKILL, the kernel ends and reaps its VRRP and checker children:
    /// on these machines PID 1 reaps no orphan, and keepalived's VRRP child outlives a killed parent.
    final class KeepalivedProcess: Sendable {
        /// `unshare`: our direct child; it exits when keepalived has.
        let launcher: ChildProcess
        /// keepalived's pid as we see it (unshare's child).
        let pid: pid_t
        private let pidfd: Int32

        init(node: Node) async throws {
            let file = { (suffix: String) in node.directory.file("keepalived-\(node.name).\(suffix)") }
            // A pid file left by a killed keepalived names pid 1, which "runs" in any new namespace.
            for suffix in ["pid", "vrrp.pid", "checkers.pid"] { unlink(file(suffix)) }
            let keepalived = ["keepalived", "-n", "-l", "-D", "-f", node.configPath,
                              "-p", file("pid"), "-r", file("vrrp.pid"), "-c", file("checkers.pid")]
            // The shell says "started" and then becomes keepalived (same pid), so once that line is
            // read unshare's child is keepalived itself.
            launcher = try ChildProcess(
                ["ip", "netns", "exec", node.namespace,
                 "unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc",
                 "/bin/sh", "-c", "echo started; exec \"$@\" >>\"$KEEPALIVED_LOG\" 2>&1", "sh"] + keepalived,
                extraEnvironment: ["DBUS_SYSTEM_BUS_ADDRESS": node.bus.unixAddress, "KEEPALIVED_LOG": node.logPath],
                captureStdout: true, captureStderr: false, logFile: node.logPath)
            guard try await launcher.readLine(timeout: .seconds(20)) == "started",
                  let child = childPids(of: launcher.pid).first else {
                await launcher.terminate(grace: .seconds(2))
                throw TestProcessError("keepalived did not start on node \(node.name): \(node.log)")
            }
            pid = child
            pidfd = _bgw_pidfd_open(child, 0)
        }

        deinit {
            if !launcher.hasExited { _ = _bgw_pidfd_send_signal(pidfd, SIGKILL) }
            if pidfd >= 0 { close(pidfd) }
        }

        func signal(_ sig: Int32) { _ = _bgw_pidfd_send_signal(pidfd, sig) }
    }

    public static let virtualRouterID = 51
    public static let virtualAddress = "198.18.0.100"
    public let nodes: [Node]
    public var a: Node { nodes[0] }
    public var b: Node { nodes[1] }
    private let watchers: Mutex<[Task<Void, Never>]>
    private let tornDown = Mutex(false)

    private init(nodes: [Node], watchers: [Task<Void, Never>]) {
        self.nodes = nodes
        self.watchers = Mutex(watchers)
    }

    /// Creates the two hosts and their buses and, when `startKeepalived`, starts keepalived on
    /// both (it does not wait for an election: use `waitForMaster`).
    public static func start(startKeepalived: Bool = true) async throws -> KeepalivedPair {
        let id = uniqueID(6)
        let namespaces = ["bgw-\(id)-a", "bgw-\(id)-b"]
        var buses: [PrivateBus] = []
        var monitors: [BusMonitor] = []
        var directories: [TemporaryDirectory] = []
        do {
            try await createHosts(namespaces)
            for _ in 0..<2 {
                let dir = try TemporaryDirectory(prefix: "bgw-ka")
                directories.append(dir)
                let bus = try await PrivateBus(directory: dir)
                buses.append(bus)
                monitors.append(try await BusMonitor(address: bus.unixAddress, matches: [
                    "type='signal',interface='org.keepalived.Vrrp1.Instance',member='VrrpStatusChange'",
                    "type='signal',interface='org.keepalived.Vrrp1.Vrrp'",
                ]))
            }
        } catch {
            for m in monitors { await m.stop() }
            for b in buses { await b.stop() }
            for d in directories { d.remove() }
            await deleteHosts(namespaces)
            throw error
        }
        let nodes = [
            Node(name: "A", namespace: namespaces[0], address: "198.18.0.1", priority: 150,
                 directory: directories[0], bus: buses[0], monitor: monitors[0]),
            Node(name: "B", namespace: namespaces[1], address: "198.18.0.2", priority: 100,
                 directory: directories[1], bus: buses[1], monitor: monitors[1]),
        ]
        let pair = KeepalivedPair(nodes: nodes, watchers: nodes.map { node in Task { await follow(node) } })
        do {
            for node in nodes {
                try pair.configuration(for: node).write(toFile: node.configPath, atomically: true, encoding: .utf8)
                if startKeepalived { try await pair.startKeepalived(on: node) }
            }
        } catch {
            await pair.teardown()
            throw error
        }
        return pair
    }

    /// Starts a pair, runs `body`, and tears the pair down whether `body` returns or throws.
    public static func with<T: Sendable>(
        startKeepalived: Bool = true, _ body: (KeepalivedPair) async throws -> T
    ) async throws -> T {
        try await withCleanup(try await start(startKeepalived: startKeepalived), cleanup: { await $0.teardown() }, body)
    }

    deinit {
        // Safety net for a test that never called teardown(): the child processes die with their
        // ChildProcess objects; the namespaces (and the veth pair with them) are removed here.
        if !tornDown.withLock({ $0 }) {
            for node in nodes {
                node.keepalived.withLock { $0 }?.signal(SIGKILL)
                runBlocking(["ip", "netns", "del", node.namespace])
            }
        }
    }

    /// keepalived's configuration for `node`: BACKUP at start, so the priority decides.
    public func configuration(for node: Node) -> String {
        """
        global_defs {
          enable_dbus
          router_id node\(node.name)
        }
        vrrp_instance VI_1 {
          state BACKUP
          interface \(node.interface)
          virtual_router_id \(Self.virtualRouterID)
          priority \(node.priority)
          advert_int 1
          virtual_ipaddress {
            \(Self.virtualAddress)/24
          }
        }

        """
    }

    /// Starts keepalived on `node` in the foreground (`-n -l -D`, its output in `node.logPath`), a
    /// child of the test, on the node's bus. Returns once it runs; `waitForStatus` follows it.
    public func startKeepalived(on node: Node) async throws {
        if let running = node.keepalived.withLock({ $0 }), !running.launcher.hasExited {
            throw TestProcessError("keepalived already runs on node \(node.name) (pid \(running.pid))")
        }
        let process = try await KeepalivedProcess(node: node)
        node.keepalived.withLock { $0 = process }
    }

    /// Stops keepalived on `node` and waits until it and its children are gone. SIGTERM (the
    /// default) is a clean stop: keepalived sends priority 0, `VrrpStatusChange(98)` and
    /// `VrrpStopped`. SIGKILL is a crash: no goodbye, and its VRRP child dies with it (the PID
    /// namespace ends), so adverts just stop and the peer takes over after the master-down interval.
    public func stopKeepalived(on node: Node, signal: Int32 = SIGTERM, timeout: Duration = .seconds(10)) async throws {
        guard let process = node.keepalived.withLock({ $0 }) else { return }
        process.signal(signal)
        try await process.launcher.waitForExit(timeout: timeout)
        node.keepalived.withLock { if $0 === process { $0 = nil } }
    }

    /// Reads `State` of the VRRP instance on `node`'s bus with busctl: the status number, or nil
    /// when no keepalived owns `org.keepalived.Vrrp1` there.
    public func readState(on node: Node) async throws -> UInt32? {
        let r = try await run(["busctl", "--address=\(node.bus.unixAddress)", "--json=short", "get-property",
                               "org.keepalived.Vrrp1", node.instancePath, "org.keepalived.Vrrp1.Instance", "State"])
        guard r.status == 0 else {
            if r.stderr.contains("not provided by any .service") || r.stderr.contains("ServiceUnknown")
                || r.stderr.contains("was not provided") || r.stderr.contains("NameHasNoOwner") {
                return nil
            }
            throw TestProcessError("busctl get-property State on node \(node.name): \(r.stderr)")
        }
        // {"type":"(us)","data":[2,"Master"]}
        guard let value = try? JSONDecoder().decode(BusValue.self, from: Data(r.stdout.utf8)),
              case .object(let o) = value, let status = o["data"]?.array?.first?.uint32
        else { throw TestProcessError("unexpected State from node \(node.name): \(r.stdout)") }
        return status
    }

    /// The node whose keepalived reads MASTER on its bus now (busctl), or nil.
    public func readMaster() async throws -> Node? {
        for node in nodes where try await readState(on: node) == Status.master { return node }
        return nil
    }

    /// Waits until `node`'s last `VrrpStatusChange` (as its bus carried it) is `status`.
    @discardableResult
    public func waitForStatus(_ status: UInt32, on node: Node, timeout: Duration = .seconds(20)) async throws -> Observed {
        try await node.observed.wait("VrrpStatusChange(\(status)) on node \(node.name)", timeout: timeout) {
            $0.status == status
        }
    }

    /// Waits until some node's last `VrrpStatusChange` is MASTER; returns that node. An election
    /// takes about 3 s (3 x advert_int plus skew) after both start.
    public func waitForMaster(timeout: Duration = .seconds(20)) async throws -> Node {
        try await withThrowingTaskGroup(of: Node.self) { group in
            for node in nodes {
                group.addTask {
                    try await self.waitForStatus(Status.master, on: node, timeout: timeout)
                    return node
                }
            }
            defer { group.cancelAll() }
            guard let first = try await group.next() else { throw CancellationError() }
            return first
        }
    }

    /// Stops both keepalived, the monitors and buses, and deletes the namespaces (and with them
    /// the veth pair). Safe to call more than once; never throws.
    public func teardown() async {
        guard tornDown.withLock({ done in defer { done = true }; return !done }) else { return }
        for node in nodes {
            do { try await stopKeepalived(on: node, timeout: .seconds(5)) }
            catch { try? await stopKeepalived(on: node, signal: SIGKILL, timeout: .seconds(10)) }
        }
        for node in nodes { await node.monitor.stop() }
        for task in watchers.withLock({ $0 }) { await task.value }
        for node in nodes {
            await node.bus.stop()
            node.directory.remove()
        }
        await Self.deleteHosts(nodes.map(\.namespace))
    }

    // MARK: - Internals

    /// Two namespaces joined by a veth pair created directly inside them, so no interface name is
    /// ever used in the test's own namespace and pairs never collide.
    private static func createHosts(_ ns: [String]) async throws {
        try await runChecked(["ip", "netns", "add", ns[0]])
        try await runChecked(["ip", "netns", "add", ns[1]])
        try await runChecked(["ip", "-n", ns[0], "link", "add", "eth0", "type", "veth",
                              "peer", "name", "eth0", "netns", ns[1]])
        for (n, address) in zip(ns, ["198.18.0.1/24", "198.18.0.2/24"]) {
            try await runChecked(["ip", "-n", n, "addr", "add", address, "dev", "eth0"])
            try await runChecked(["ip", "-n", n, "link", "set", "eth0", "up"])
            try await runChecked(["ip", "-n", n, "link", "set", "lo", "up"])
        }
    }

    private static func deleteHosts(_ ns: [String]) async {
        for n in ns { _ = try? await run(["ip", "netns", "del", n]) }
    }

    /// Turns the node's monitor lines into `observed` until the monitor ends.
    private static func follow(_ node: Node) async {
        while true {
            let message: BusMessage?
            do { message = try await node.monitor.next(timeout: .seconds(86_400)) } catch { continue }
            guard let message else { break }
            switch (message.interface, message.member) {
            case ("org.keepalived.Vrrp1.Instance", "VrrpStatusChange"):
                guard message.path == node.instancePath, let status = message.body.first?.uint32 else { continue }
                node.observed.update {
                    $0.changes.append(status)
                    $0.status = status
                }
            case ("org.keepalived.Vrrp1.Vrrp", "VrrpStarted"):
                node.observed.update { $0.started += 1 }
            case ("org.keepalived.Vrrp1.Vrrp", "VrrpStopped"):
                node.observed.update {
                    $0.stopped += 1
                    $0.status = nil
                }
            default:
                continue
            }
        }
        node.observed.finish("the bus monitor of node \(node.name) ended")
    }
}
