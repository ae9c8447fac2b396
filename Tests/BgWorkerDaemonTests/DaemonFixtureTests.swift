import BgWorkerAPI
import Foundation
import Glibc
import Synchronization
import Testing
import TestSupport

// The fixture of the daemon tests: a real dbus-daemon, the real built `bgworkerd`, its
// configuration in a temporary folder, and real clients (busctl, dbus-send, gdbus, python3-dbus).

/// A worker row of `ListWorkers` (`a(ssbuo)`), as busctl prints it.
struct WorkerRow: Equatable, CustomStringConvertible {
    var name: String
    var state: String
    var enabled: Bool
    var pid: UInt32
    var path: String
    var description: String { "\(name) \(state) enabled=\(enabled) pid=\(pid) \(path)" }
}

/// One `WorkerStateChanged` signal.
struct StateChange: Equatable, CustomStringConvertible {
    var name: String
    var state: String
    var pid: UInt32
    var reason: String
    var description: String { "\(name) \(state) pid=\(pid) (\(reason))" }

    init(name: String, state: String, pid: UInt32, reason: String) {
        self.name = name
        self.state = state
        self.pid = pid
        self.reason = reason
    }

    init?(_ message: BusMessage) {
        guard message.type == "signal", message.member == "WorkerStateChanged", message.body.count == 4,
              let name = message.body[0].string, let state = message.body[1].string,
              let pid = message.body[2].uint32, let reason = message.body[3].string
        else { return nil }
        self.name = name
        self.state = state
        self.pid = pid
        self.reason = reason
    }
}

/// `[daemon]` lines every test config has: its own state folder.
final class DaemonFixture: Sendable {
    static let manager = BgWorkerBus.managerPath
    static let interface = BgWorkerBus.managerInterface
    static let busName = BgWorkerBus.busName

    let bus: PrivateBus
    let directory: TemporaryDirectory
    let configPath: String
    private let current: Mutex<DaemonProcess?>
    private let cleanups = Mutex<[@Sendable () async -> Void]>([])

    var daemon: DaemonProcess {
        get throws {
            guard let daemon = current.withLock({ $0 }) else { throw TestProcessError("no daemon runs") }
            return daemon
        }
    }

    /// Writes `bgworkerd.toml` (a `[daemon]` table with a state folder of its own plus
    /// `daemonSettings`, then `configuration`) and starts the daemon, unless `start` is false.
    init(_ configuration: String, daemonSettings: String = "", dropIns: [String: String] = [:],
         arguments: [String] = [], start: Bool = true) async throws {
        directory = try TemporaryDirectory(prefix: "bgw-daemon")
        chmod(directory.path, 0o755)
        bus = try await PrivateBus(directory: directory)
        configPath = directory.file("bgworkerd.toml")
        current = Mutex(nil)
        try writeConfiguration(configuration, daemonSettings: daemonSettings)
        if !dropIns.isEmpty {
            try FileManager.default.createDirectory(atPath: directory.file("workers.d"), withIntermediateDirectories: true)
            for (name, text) in dropIns { try text.write(toFile: directory.file("workers.d/\(name)"), atomically: true, encoding: .utf8) }
        }
        if start { try await startDaemon(arguments: arguments) }
    }

    var stateDirectory: String { directory.file("state") }

    func writeConfiguration(_ configuration: String, daemonSettings: String = "") throws {
        let text = """
            [daemon]
            state-directory = "\(stateDirectory)"
            \(daemonSettings)

            \(configuration)
            """
        try text.write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    @discardableResult
    func startDaemon(arguments: [String] = [], waitUntilReady: Bool = true) async throws -> DaemonProcess {
        let daemon = try await DaemonProcess(
            bus: bus, configPath: configPath, arguments: ["--runner", "process"] + arguments,
            runtimeDirectory: directory.file("run"), waitUntilReady: waitUntilReady)
        current.withLock { $0 = daemon }
        return daemon
    }

    /// Stops the daemon (SIGTERM unless told otherwise) and returns its wait status.
    @discardableResult
    func stopDaemon(signal: Int32 = SIGTERM) async throws -> Int32 {
        let daemon = try daemon
        let status = try await daemon.stop(signal: signal)
        current.withLock { $0 = nil }
        return status
    }

    /// Runs `action` at teardown (in reverse order of registration, before the daemon and the bus
    /// stop): for the extra processes a test starts (monitors, a second bus, an HA manager).
    func atTeardown(_ action: @escaping @Sendable () async -> Void) {
        cleanups.withLock { $0.append(action) }
    }

    func teardown() async {
        for action in cleanups.withLock({ list in defer { list = [] }; return list }).reversed() { await action() }
        if let daemon = current.withLock({ $0 }) { await daemon.process.terminate(grace: .seconds(10)) }
        await bus.stop()
    }

    /// Runs `body` with a fixture and always tears it down; on failure the daemon's log is printed.
    static func with(
        _ configuration: String, daemonSettings: String = "", dropIns: [String: String] = [:],
        arguments: [String] = [], start: Bool = true, _ body: (DaemonFixture) async throws -> Void
    ) async throws {
        let fixture = try await DaemonFixture(
            configuration, daemonSettings: daemonSettings, dropIns: dropIns, arguments: arguments, start: start)
        do {
            try await body(fixture)
        } catch {
            print("--- bgworkerd log ---\n\((try? fixture.daemon.log) ?? "")")
            if let daemon = try? fixture.daemon { print(await threadStacks(of: daemon.pid)) }
            await fixture.teardown()
            throw error
        }
        await fixture.teardown()
    }

    // MARK: Clients

    /// `busctl --address=... ARGS`.
    func busctl(_ arguments: [String]) async throws -> (status: Int32, stdout: String, stderr: String) {
        try await run(["busctl", "--address=\(bus.unixAddress)"] + arguments)
    }

    /// `busctl --json=short call` on the manager; returns the reply's data, throws with busctl's
    /// message on an error reply.
    @discardableResult
    func call(_ member: String, _ signature: String = "", _ arguments: [String] = [],
              path: String = DaemonFixture.manager, interface: String = DaemonFixture.interface) async throws -> [BusValue] {
        var argv = ["--json=short", "call", Self.busName, path, interface, member]
        if !signature.isEmpty { argv += [signature] + arguments }
        let result = try await busctl(argv)
        guard result.status == 0 else { throw TestProcessError("\(member) failed: \(result.stderr)") }
        return try Self.decodeReply(result.stdout)
    }

    static func decodeReply(_ text: String) throws -> [BusValue] {
        guard !text.isEmpty else { return [] }
        let top = try JSONDecoder().decode([String: BusValue].self, from: Data(text.utf8))
        return top["data"]?.array ?? []
    }

    /// `dbus-send --print-reply` on the manager (or `path`/`interface`); returns (status, output)
    /// where a failure's output starts with `Error <error name>: <message>`.
    func dbusSend(_ member: String, _ arguments: [String] = [], path: String = DaemonFixture.manager,
                  interface: String = DaemonFixture.interface, asUser uid: Int? = nil) async throws -> (status: Int32, output: String) {
        var argv = ["dbus-send", "--bus=\(bus.unixAddress)", "--print-reply", "--dest=\(Self.busName)", path,
                    "\(interface).\(member)"] + arguments
        if let uid { argv = ["setpriv", "--reuid=\(uid)", "--regid=\(uid)", "--clear-groups"] + argv }
        let result = try await run(argv)
        return (result.status, result.stdout + result.stderr)
    }

    func listWorkers() async throws -> [WorkerRow] {
        let reply = try await call("ListWorkers")
        guard let rows = reply.first?.array else { throw TestProcessError("ListWorkers answered \(reply)") }
        return try rows.map { row in
            guard let fields = row.array, fields.count == 5, let name = fields[0].string, let state = fields[1].string,
                  let enabled = fields[2].bool, let pid = fields[3].uint32, let path = fields[4].string
            else { throw TestProcessError("bad ListWorkers row \(row)") }
            return WorkerRow(name: name, state: state, enabled: enabled, pid: pid, path: path)
        }
    }

    func worker(_ name: String) async throws -> WorkerRow {
        guard let row = try await listWorkers().first(where: { $0.name == name }) else {
            throw TestProcessError("no worker \(name) in ListWorkers")
        }
        return row
    }

    /// A property of a worker object (by its label) or of the manager.
    func property(_ name: String, worker label: String? = nil) async throws -> BusValue {
        let path = label.map { "\(Self.manager)/worker/\($0)" } ?? Self.manager
        let interface = label == nil ? Self.interface : "\(Self.interface).Worker"
        return try await busctlProperty(address: bus.unixAddress, path: path, interface: interface, name)
    }

    /// A monitor of the daemon's signals, method calls, replies and errors.
    func monitor() async throws -> BusMonitor {
        try await track(BusMonitor(address: bus.unixAddress, matches: [
            "type='signal',sender='\(Self.busName)'",
            "type='method_call',destination='\(Self.busName)'",
            "type='method_return'", "type='error'",
        ]))
    }

    /// Stops `monitor` at teardown.
    func track(_ monitor: BusMonitor) -> BusMonitor {
        atTeardown { await monitor.stop() }
        return monitor
    }

    /// The daemon's unique name.
    func daemonUniqueName() async throws -> String {
        let reply = try await run(["busctl", "--address=\(bus.unixAddress)", "--json=short", "call", "org.freedesktop.DBus",
                                   "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetNameOwner", "s", Self.busName])
        guard let name = try Self.decodeReply(reply.stdout).first?.string else { throw TestProcessError("no owner: \(reply.stderr)") }
        return name
    }
}

/// A property of the daemon's object at `path`, read with `busctl get-property` on `address`.
func busctlProperty(address: String, path: String, interface: String, _ name: String) async throws -> BusValue {
    let result = try await run(["busctl", "--address=\(address)", "--json=short", "get-property", DaemonFixture.busName,
                                path, interface, name])
    guard result.status == 0 else { throw TestProcessError("get-property \(name) failed: \(result.stderr)") }
    let top = try JSONDecoder().decode([String: BusValue].self, from: Data(result.stdout.utf8))
    guard let data = top["data"] else { throw TestProcessError("get-property \(name) printed \(result.stdout)") }
    return data
}

extension BusMonitor {
    /// Returns once `worker`'s `property`, as `read` reads it, satisfies `predicate`: reads it,
    /// and again after each PropertiesChanged of the worker's object. Start the monitor before
    /// the change can happen.
    func waitForProperty(
        of worker: String, _ property: String, timeout: Duration, read: (String) async throws -> BusValue,
        _ predicate: (BusValue) -> Bool
    ) async throws -> BusValue {
        let deadline = ContinuousClock.now + timeout
        while true {
            let value = try await read(property)
            if predicate(value) { return value }
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw TestProcessError("\(worker).\(property) is \(value) after \(timeout)") }
            _ = try await waitFor("PropertiesChanged of \(worker)", timeout: left) {
                $0.member == "PropertiesChanged" && $0.path == BgWorkerBus.workerPathPrefix + worker
            }
        }
    }

    /// Returns once `worker` is in `state`: reads it (ListWorkers), and after each of its
    /// WorkerStateChanged reads it again. Start the monitor before the change can happen.
    func waitUntil(_ fixture: DaemonFixture, worker: String, is state: String, timeout: Duration = .seconds(15)) async throws -> WorkerRow {
        let deadline = ContinuousClock.now + timeout
        while true {
            let row = try await fixture.worker(worker)
            if row.state == state { return row }
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw TestProcessError("\(worker) is \(row.state), not \(state), after \(timeout)") }
            _ = try await stateChange(of: worker, timeout: left)
        }
    }

    /// The next `WorkerStateChanged` of `worker` (earlier messages are consumed).
    func stateChange(of worker: String, to state: String? = nil, timeout: Duration = .seconds(10)) async throws -> StateChange {
        let message = try await waitFor("WorkerStateChanged \(worker) \(state ?? "*")", timeout: timeout) { message in
            guard let change = StateChange(message) else { return false }
            return change.name == worker && (state == nil || change.state == state)
        }
        guard let change = StateChange(message) else { throw TestProcessError("unreachable") }
        return change
    }

    /// Every `WorkerStateChanged` up to the reply (method_return or error) the daemon sends to a
    /// call of `member`; the reply is the last element's `reply`.
    func changes(untilReplyTo member: String, daemon: String, timeout: Duration = .seconds(20)) async throws -> (changes: [StateChange], reply: BusMessage) {
        var caller: String?
        var changes: [StateChange] = []
        let deadline = ContinuousClock.now + timeout
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero, let message = try await next(timeout: left) else {
                throw TestProcessError("no reply to \(member); seen \(changes)")
            }
            if message.type == "method_call", message.member == member, caller == nil { caller = message.sender }
            if let change = StateChange(message) { changes.append(change) }
            if (message.type == "method_return" || message.type == "error"), message.sender == daemon,
               let caller, message.destination == caller {
                return (changes, message)
            }
        }
    }
}

/// A /bin/sh worker table.
func shellWorker(_ name: String, _ script: String, extra: String = "") -> String {
    let escaped = script.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
    return """
        [worker.\(name)]
        exec = ["/bin/sh", "-c", "\(escaped)"]
        \(extra)

        """
}

/// A worker that runs a program directly (no shell in between), so its command line is known
/// as soon as it runs.
func execWorker(_ name: String, _ argv: [String], extra: String = "") -> String {
    """
    [worker.\(name)]
    exec = [\(argv.map { "\"\($0)\"" }.joined(separator: ", "))]
    \(extra)

    """
}

/// The command line of a live process (for "is it our worker" checks), or nil.
func commandLine(of pid: UInt32) -> String? {
    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !data.isEmpty else { return nil }
    return String(decoding: data, as: UTF8.self).replacingOccurrences(of: "\0", with: " ")
}

/// A named pipe a worker script writes lines into (`echo $$ > FIFO`), read by the test with a
/// deadline: how a worker says "I got this far" without the test polling.
final class Fifo: Sendable {
    let path: String
    private let readEnd: Int32
    /// Held open so that the reader never sees end-of-file between two writers.
    private let writeEnd: Int32
    private let pending = Mutex<[UInt8]>([])

    init(_ path: String) throws {
        self.path = path
        guard mkfifo(path, 0o666) == 0 else { throw TestProcessError("mkfifo \(path): \(errno)") }
        chmod(path, 0o666)
        readEnd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        writeEnd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC)
        guard readEnd >= 0, writeEnd >= 0 else { throw TestProcessError("open \(path): \(errno)") }
    }

    deinit {
        close(readEnd)
        close(writeEnd)
        unlink(path)
    }

    /// Writes a line for a worker to read (`read x < FIFO`): it waits in the pipe until then.
    func writeLine(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(writeEnd, $0.baseAddress, $0.count) }
    }

    /// The next line written into the pipe.
    func readLine(timeout: Duration = .seconds(10)) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let line = pending.withLock({ buffer -> String? in
                guard let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
                defer { buffer.removeSubrange(...newline) }
                return String(decoding: buffer[..<newline], as: UTF8.self)
            }) { return line }
            let left = deadline - ContinuousClock.now
            guard left > .zero, try await awaitReadable(readEnd, timeout: left) else {
                throw TestProcessError("nothing written into \(path) within \(timeout)")
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = read(readEnd, &chunk, chunk.count)
            if count > 0 { pending.withLock { $0 += chunk[0..<count] } }
        }
    }
}

/// Reads `/proc/PID/environ`.
func environment(of pid: UInt32) -> [String: String] {
    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return [:] }
    var result: [String: String] = [:]
    for entry in data.split(separator: 0) {
        let text = String(decoding: entry, as: UTF8.self)
        guard let equals = text.firstIndex(of: "=") else { continue }
        result[String(text[..<equals])] = String(text[text.index(after: equals)...])
    }
    return result
}

/// The time `body` takes.
func elapsed(_ body: () async throws -> Void) async rethrows -> Duration {
    let start = ContinuousClock.now
    try await body()
    return ContinuousClock.now - start
}

/// Every thread's stack of `pid` (gdb, where installed): printed when a test fails with the daemon
/// alive, so that a hang (a call never answered) shows where the daemon waits.
func threadStacks(of pid: pid_t) async -> String {
    guard FileManager.default.isExecutableFile(atPath: "/usr/bin/gdb"), kill(pid, 0) == 0 else { return "" }
    let result = try? await run(
        ["/usr/bin/gdb", "-p", String(pid), "-batch", "-nx", "-ex", "thread apply all bt"], timeout: .seconds(60))
    return "--- bgworkerd threads (gdb) ---\n\(result?.stdout ?? "gdb failed")"
}
