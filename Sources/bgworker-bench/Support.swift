// What the subcommands share: signals received with their arrival time, a daemon on a private
// bus, the floor's own spawns, and readings of /proc.
import BgWorkerAPI
import CShims
import DBus
import Foundation
import Glibc
import SystemSupport
import Synchronization
import TestSupport

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

// MARK: - Signals with arrival times

/// Every signal matching a rule, with its arrival time (see `StampedSignals`: stamped on a
/// thread of its own at the socket's readiness); waiters are woken by arrivals, never by a timer.
final class SignalLog: Sendable {
    struct Entry: Sendable {
        var signal: DBusSignal
        var at: UInt64
        var index: Int
    }

    private final class Sink: Sendable {
        struct Waiter {
            var from: Int
            var match: @Sendable (DBusSignal) -> Bool
            var continuation: CheckedContinuation<Entry, any Error>
        }

        struct State {
            var entries: [Entry] = []
            var waiters: [UInt64: Waiter] = [:]
            var nextID: UInt64 = 0
            var ended = false
        }

        let state = Mutex(State())

        func end() {
            let waiters = state.withLock { s -> [Waiter] in
                s.ended = true
                defer { s.waiters = [:] }
                return Array(s.waiters.values)
            }
            for w in waiters { w.continuation.resume(throwing: BenchError("the signal subscription ended (bus gone)")) }
        }

        func append(_ signal: DBusSignal, at: UInt64) {
            let woken = state.withLock { s -> [(CheckedContinuation<Entry, any Error>, Entry)] in
                let entry = Entry(signal: signal, at: at, index: s.entries.count)
                s.entries.append(entry)
                let ready = s.waiters.filter { $0.value.from <= entry.index && $0.value.match(signal) }
                for id in ready.keys { s.waiters[id] = nil }
                return ready.values.map { ($0.continuation, entry) }
            }
            for (continuation, entry) in woken { continuation.resume(returning: entry) }
        }
    }

    private let sink: Sink
    private let stamped: StampedSignals

    /// Subscribes on the bus at `address` (returns once the bus has the rule).
    init(address: String, _ rule: MatchRule) async throws {
        let sink = Sink()
        stamped = try await StampedSignals.start(address: address, rules: [rule],
                                                 deliver: { signal, at in sink.append(signal, at: at) },
                                                 ended: { sink.end() })
        self.sink = sink
    }

    deinit { stamped.cancel() }

    /// The index the next signal will get: pass it as `from` to wait only for later signals.
    var nextIndex: Int { sink.state.withLock { $0.entries.count } }

    /// The first signal at index `from` or later that matches; waits for it until `timeout`.
    func next(from: Int, timeout: Duration = .seconds(10), _ what: String,
              where match: @escaping @Sendable (DBusSignal) -> Bool) async throws -> Entry {
        try await withDeadline(timeout, orThrow: { BenchError("timed out after \(timeout) waiting for \(what)") }) {
            try await self.next(from: from, what, triggeredBy: {}, where: match)
        }
    }

    /// The first signal at index `from` or later that matches, with `trigger` called once the
    /// waiter is in place and no timer of its own (the caller bounds the whole measurement with
    /// `withDeadline`): between the trigger and the signal's arrival the bench itself does nothing,
    /// where a timeout per wait would start two tasks and a timer just as the signal travels.
    func next(from: Int, _ what: String, triggeredBy trigger: () throws -> Void,
              where match: @escaping @Sendable (DBusSignal) -> Bool) async throws -> Entry {
        let sink = self.sink
        let id = sink.state.withLock { s -> UInt64 in s.nextID += 1; return s.nextID }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let found = sink.state.withLock { s -> Result<Entry, any Error>? in
                    if from < s.entries.count, let e = s.entries[from...].first(where: { match($0.signal) }) {
                        return .success(e)
                    }
                    if s.ended { return .failure(BenchError("the signal subscription ended before \(what)")) }
                    // Cancelled already: `onCancel` may have run before the waiter was in
                    // place and found nothing to end.
                    if Task.isCancelled { return .failure(CancellationError()) }
                    s.waiters[id] = Sink.Waiter(from: from, match: match, continuation: continuation)
                    return nil
                }
                if let found { return continuation.resume(with: found) }
                do { try trigger() } catch {
                    let waiter = sink.state.withLock { $0.waiters.removeValue(forKey: id) }
                    waiter?.continuation.resume(throwing: error)
                }
            }
        } onCancel: {
            let waiter = sink.state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.continuation.resume(throwing: CancellationError())
        }
    }
}

/// A `WorkerStateChanged` signal's arguments.
struct StateChange: Sendable {
    var name: String
    var state: String
    var pid: UInt32
    var reason: String

    init?(_ signal: DBusSignal) {
        guard signal.member == BgWorkerBus.Signal.workerStateChanged, signal.arguments.count == 4,
              let name = signal.arguments[0].stringValue, let state = signal.arguments[1].stringValue,
              let pid = signal.arguments[2].uint32Value, let reason = signal.arguments[3].stringValue
        else { return nil }
        self.name = name
        self.state = state
        self.pid = pid
        self.reason = reason
    }
}

// MARK: - A daemon on a private bus

enum Manager {
    static let name = BgWorkerBus.busName
    static let path = try! ObjectPath(BgWorkerBus.managerPath)
    static let interface = BgWorkerBus.managerInterface
}

/// bgworkerd (the release build beside the benchmark) with the process runner on a private bus
/// of its own, a client connection, and every `WorkerStateChanged` with its arrival time. Its
/// NOTIFY_SOCKET is drained as systemd would (`NotifyDrain`); its output goes to a log file.
final class BenchDaemon: Sendable {
    let bus: PrivateBus
    let directory: TemporaryDirectory
    let configPath: String
    let process: ChildProcess
    let notify: NotifyDrain
    let client: DBusConnection
    let states: SignalLog
    /// When the daemon was spawned and when its READY=1 arrived (CLOCK_MONOTONIC).
    let spawnedAt: UInt64
    let readyAt: UInt64

    var pid: pid_t { process.pid }
    var logPath: String { directory.file("bgworkerd.log") }
    private let stopped = Mutex(false)

    /// Writes the configuration (`[daemon]` with a state folder of its own, then `body`) and
    /// starts the daemon; returns once it sent READY=1 and the client is subscribed.
    /// `states`: the signals to record (by default every `WorkerStateChanged`); `logFile`: where
    /// the daemon's output goes (by default `bgworkerd.log` in its folder); `stateFile`: a file
    /// hard-linked (else copied) as the daemon's state file before it starts.
    static func start(_ body: String, bus existing: PrivateBus? = nil, arguments: [String] = ["--runner", "process"],
                      states rule: MatchRule = MatchRule(interface: Manager.interface, member: BgWorkerBus.Signal.workerStateChanged),
                      logFile: String? = nil, timeout: Duration = .seconds(60),
                      environment extra: [String: String] = [:], stateFile: String? = nil) async throws -> BenchDaemon {
        let directory = try Interrupt.directory(prefix: "bgw-bench")
        let bus: PrivateBus
        if let existing { bus = existing } else { bus = try await PrivateBus(directory: directory) }
        let configPath = directory.file("bgworkerd.toml")
        try writeConfiguration(body, to: configPath, stateDirectory: directory.file("state"))
        if let stateFile {
            try FileManager.default.createDirectory(atPath: directory.file("state"), withIntermediateDirectories: true)
            let target = directory.file("state/enable-state")
            if link(stateFile, target) != 0 { try FileManager.default.copyItem(atPath: stateFile, toPath: target) }
        }
        // Subscribed before the daemon starts, so that its first signals are seen too.
        let client = try await DBusConnection.connect(.address(bus.unixAddress))
        let states = try await SignalLog(address: bus.unixAddress, rule)
        let notify = try NotifyDrain()
        let spawnedAt = monotonicNanoseconds()
        let process = try ChildProcess(
            [builtExecutablePath("bgworkerd"), "--config", configPath, "--bus", bus.unixAddress] + arguments,
            extraEnvironment: extra.merging(["NOTIFY_SOCKET": notify.address, "RUNTIME_DIRECTORY": directory.file("run")]) { $1 },
            captureStdout: false, captureStderr: false, logFile: logFile ?? directory.file("bgworkerd.log"))
        let readyAt = try await withThrowingTaskGroup(of: UInt64?.self) { group in
            group.addTask { await notify.ready() }
            group.addTask { _ = try? await process.waitForExit(timeout: timeout); return nil }
            defer { group.cancelAll() }
            return try await group.next() ?? nil
        }
        guard let readyAt else {
            let log = (try? String(contentsOfFile: directory.file("bgworkerd.log"), encoding: .utf8)) ?? ""
            await process.terminate(grace: .seconds(2))
            notify.close()
            throw BenchError("bgworkerd sent no READY=1 within \(timeout) (or exited)\n--- log ---\n\(log.suffix(3000))")
        }
        return BenchDaemon(bus: bus, directory: directory, configPath: configPath, process: process, notify: notify,
                           client: client, states: states, spawnedAt: spawnedAt, readyAt: readyAt)
    }

    static func writeConfiguration(_ body: String, to path: String, stateDirectory: String) throws {
        // Not root: the bench's own group may change state (else every Enable is AccessDenied).
        let admin = geteuid() == 0 ? "" : "admin-group = \"\(getegid())\""
        try """
            [daemon]
            state-directory = "\(stateDirectory)"
            \(admin)

            \(body)
            """.write(toFile: path, atomically: true, encoding: .utf8)
    }

    private init(bus: PrivateBus, directory: TemporaryDirectory, configPath: String, process: ChildProcess,
                 notify: NotifyDrain, client: DBusConnection, states: SignalLog, spawnedAt: UInt64, readyAt: UInt64) {
        self.bus = bus
        self.directory = directory
        self.configPath = configPath
        self.process = process
        self.notify = notify
        self.client = client
        self.states = states
        self.spawnedAt = spawnedAt
        self.readyAt = readyAt
    }

    func rewrite(_ body: String) throws {
        try Self.writeConfiguration(body, to: configPath, stateDirectory: directory.file("state"))
    }

    @discardableResult
    func call(_ member: String, _ arguments: [DBusValue] = [], timeout: Duration = .seconds(60)) async throws -> [DBusValue] {
        try await client.call(destination: Manager.name, path: Manager.path, interface: Manager.interface,
                              member: member, arguments: arguments, timeout: timeout)
    }

    /// name -> pid of every worker (ListWorkers).
    func pids() async throws -> [String: UInt32] {
        let rows = try await call("ListWorkers").first
        guard case .array(_, let items)? = rows else { throw BenchError("ListWorkers: unexpected reply") }
        var out: [String: UInt32] = [:]
        for item in items {
            guard case .structure(let fields) = item, fields.count == 5, let name = fields[0].stringValue,
                  let pid = fields[3].uint32Value else { continue }
            out[name] = pid
        }
        return out
    }

    /// Waits for `worker` to report `state` (with a pid other than `not`, when given) from signal `from` on.
    @discardableResult
    func waitForState(_ worker: String, _ state: String, from: Int, notPid: UInt32? = nil,
                      timeout: Duration = .seconds(10)) async throws -> (change: StateChange, at: UInt64) {
        let entry = try await states.next(from: from, timeout: timeout, "\(worker) \(state)", where: Self.isState(worker, state, notPid))
        guard let change = StateChange(entry.signal) else { throw BenchError("bad WorkerStateChanged") }
        return (change, entry.at)
    }

    /// As `waitForState`, with `trigger` called once the waiter is in place and no timeout of its
    /// own (`SignalLog.next(from:_:triggeredBy:where:)`).
    func waitForState(_ worker: String, _ state: String, triggeredBy trigger: () throws -> Void) async throws -> UInt64 {
        try await states.next(from: states.nextIndex, "\(worker) \(state)", triggeredBy: trigger, where: Self.isState(worker, state, nil)).at
    }

    private static func isState(_ worker: String, _ state: String, _ notPid: UInt32?) -> @Sendable (DBusSignal) -> Bool {
        { signal in
            guard let c = StateChange(signal) else { return false }
            return c.name == worker && c.state == state && (notPid == nil || c.pid != notPid)
        }
    }

    /// Waits until `count` distinct workers whose names start with `prefix` reported `running`.
    func waitForRunning(count: Int, prefix: String, from: Int, timeout: Duration) async throws -> UInt64 {
        var seen = Set<String>()
        var index = from
        var last: UInt64 = 0
        let deadline = ContinuousClock.now + timeout
        while seen.count < count {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw BenchError("only \(seen.count) of \(count) workers running after \(timeout)") }
            let entry = try await states.next(from: index, timeout: left,
                                              "\(count) workers running (\(seen.count) so far, \(states.nextIndex) signals)") { signal in
                guard let c = StateChange(signal) else { return false }
                return c.state == "running" && c.name.hasPrefix(prefix)
            }
            if let c = StateChange(entry.signal) { seen.insert(c.name) }
            index = entry.index + 1
            last = entry.at
        }
        return last
    }

    /// SIGTERM, wait for the exit; then the bus (when this daemon made it) and the folder go.
    /// Safety net for a phase that threw before `stop`: the daemon's ChildProcess kills and reaps
    /// it as it goes; the folder and the notify thread go here.
    deinit {
        if !stopped.withLock({ $0 }) {
            process.signal(SIGKILL)
            notify.close()
            client.close()
            directory.remove()
        }
    }

    func stop(ownBus: Bool = true) async {
        stopped.withLock { $0 = true }
        process.signal(SIGTERM)
        if (try? await process.waitForExit(timeout: .seconds(60))) == nil { await process.terminate(grace: .seconds(2)) }
        notify.close()
        client.close()
        if ownBus { await bus.stop() }
        directory.remove()
    }
}

/// `count` worker tables named `<prefix>0001`... running `argv`.
func workerTables(_ count: Int, prefix: String, argv: [String], extra: String = "") -> String {
    (1...max(count, 1)).prefix(count).map { i in
        let name = prefix + String(format: "%04d", i)
        return """
            [worker.\(name)]
            exec = [\(argv.map { "\"\($0)\"" }.joined(separator: ", "))]
            \(extra)

            """
    }.joined()
}

// MARK: - The floor's own spawns

/// A process the benchmark spawned for a floor, as the process runner spawns a worker: a
/// process group of its own, default signal dispositions and an empty mask, stdin /dev/null,
/// stdout and stderr to pipes (kept open, as the daemon keeps them to read output).
/// `posix_spawn` in glibc is `clone(CLONE_VM|CLONE_VFORK)` + exec, the technique of the runner's
/// own spawn: it returns once the program has been exec'd.
struct FloorProcess {
    let pid: pid_t
    /// -1 without `watchExit`.
    let pidfd: Int32
    let pipes: [Int32]

    /// `oneOutputPipe`: stdout and stderr share one pipe. `watchExit`: a pidfd is held too, for
    /// waits with a deadline; without it, 1 fd is held per process, as bgworkerd holds per worker.
    static func spawn(_ argv: [String], environment: [String], oneOutputPipe: Bool = false, watchExit: Bool = true) throws -> FloorProcess {
        var spawn = CleanSpawn(newProcessGroup: true)
        defer { spawn.destroy() }
        var out: [Int32] = [-1, -1], err: [Int32] = [-1, -1]
        guard _bgw_pipe_cloexec(&out) == 0, oneOutputPipe || _bgw_pipe_cloexec(&err) == 0 else { throw BenchError("pipe2: \(errno)") }
        posix_spawn_file_actions_addopen(&spawn.actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&spawn.actions, out[1], 1)
        posix_spawn_file_actions_adddup2(&spawn.actions, oneOutputPipe ? out[1] : err[1], 2)
        var pid: pid_t = 0
        let rc = spawn.spawn(&pid, argv, environment: environment)
        let ends = oneOutputPipe ? [out] : [out, err]
        ends.forEach { close($0[1]) }
        guard rc == 0 else {
            ends.forEach { close($0[0]) }
            throw BenchError("posix_spawn \(argv[0]): \(String(cString: strerror(rc)))")
        }
        return FloorProcess(pid: pid, pidfd: watchExit ? _bgw_pidfd_open(pid, 0) : -1, pipes: ends.map { $0[0] })
    }

    /// Sends `signal` (by pid: our unreaped child's is not reused) and reaps the process (blocking).
    func killAndReap(_ signal: Int32 = SIGKILL) {
        _ = kill(pid, signal)
        reap()
    }

    /// Waits (blocking: poll on the pidfd when there is one, else waitpid) for the exit, reaps, closes.
    func reap() {
        if pidfd >= 0 {
            var fds = [pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)]
            while poll(&fds, 1, -1) < 0 && errno == EINTR {}
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        if pidfd >= 0 { close(pidfd) }
        pipes.forEach { close($0) }
    }
}

/// The environment a worker gets from the daemon (a default PATH, the bus, its name and level).
func workerEnvironment(name: String, bus: String) -> [String] {
    ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "DBUS_SYSTEM_BUS_ADDRESS=\(bus)",
     "BGWORKER_NAME=\(name)", "BGWORKER_LOG_LEVEL=info"]
}

/// Waits (blocking) until the process behind `pidfd` is gone; returns when. For a process that
/// is not our child, whose exit only its parent reaps.
func waitGone(pidfd: Int32, timeout: Duration) -> UInt64? {
    var fds = [pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)]
    let ms = Int32(timeout.components.seconds * 1000)
    while true {
        let rc = poll(&fds, 1, ms)
        if rc < 0 && errno == EINTR { continue }
        return rc > 0 ? monotonicNanoseconds() : nil
    }
}

// MARK: - /proc

enum ProcReading {
    /// VmRSS of a process, in KiB.
    static func residentKiB(_ pid: pid_t) -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Double(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        }
        return nil
    }

    struct ThreadSwitches: Sendable {
        var tid: Int32
        var name: String
        var voluntary: Int
        var nonvoluntary: Int
        var total: Int { voluntary + nonvoluntary }
    }

    /// Context switches of every thread of `pid` (/proc/PID/task/*/status).
    static func switches(_ pid: pid_t) -> [Int32: ThreadSwitches] {
        let dir = "/proc/\(pid)/task"
        var out: [Int32: ThreadSwitches] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            guard let tid = Int32(entry),
                  let text = try? String(contentsOfFile: "\(dir)/\(entry)/status", encoding: .utf8) else { continue }
            var t = ThreadSwitches(tid: tid, name: "", voluntary: 0, nonvoluntary: 0)
            for line in text.split(separator: "\n") {
                let parts = line.split(separator: ":", maxSplits: 1)
                guard parts.count == 2 else { continue }
                let value = parts[1].trimmingCharacters(in: .whitespaces)
                switch parts[0] {
                case "Name": t.name = value
                case "voluntary_ctxt_switches": t.voluntary = Int(value) ?? 0
                case "nonvoluntary_ctxt_switches": t.nonvoluntary = Int(value) ?? 0
                default: break
                }
            }
            out[tid] = t
        }
        return out
    }
}

/// Runs `body` on a thread of its own (blocking work that must not occupy the cooperative pool).
func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await onThread { Result { try body() } }.get()
}
