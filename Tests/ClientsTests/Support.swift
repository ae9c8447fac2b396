import BgWorkerAPI
import DBus
import Foundation
import Glibc
import Synchronization
import Testing
import TestSupport

/// The package's root folder (for the files it ships, e.g. `dbus/*.xml`).
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

/// Runs `body` with a fresh private bus that is stopped afterwards, whatever happens.
func withBus<T>(_ body: (PrivateBus) async throws -> T) async throws -> T {
    try await withCleanup(try await PrivateBus(), cleanup: { await $0.stop() }, body)
}

extension NamedPipe {
    /// What is written into the pipe, line by line (read by `cat`, a child of the test).
    func reader() throws -> (process: ChildProcess, lines: OutputLines) {
        let cat = try ChildProcess(["cat", path], captureStdout: true)
        return (cat, OutputLines(of: cat))
    }
}

/// Reads lines of a child's standard output into a list that tests wait on, so that a test can
/// wait for one line and later look at everything printed (nothing is consumed twice or lost).
final class OutputLines: Sendable {
    let lines = WatchedValue<[String]>([])

    init(of process: ChildProcess) {
        Task {
            do {
                while let line = try await process.readLine(timeout: .seconds(3600)) {
                    lines.update { $0.append(line) }
                }
                lines.finish("\(process.argv[0]) closed its output")
            } catch {
                lines.finish("reading \(process.argv[0]): \(error)")
            }
        }
    }

    var all: [String] { lines.value }

    /// Waits for a line (after the first `after` lines) that satisfies `predicate`; returns its index.
    @discardableResult
    func wait(_ what: String, after: Int = 0, timeout: Duration = .seconds(15),
              where predicate: @escaping @Sendable (String) -> Bool) async throws -> Int {
        let found = try await lines.wait(what, timeout: timeout) { $0.dropFirst(after).contains(where: predicate) }
        return found.indices.dropFirst(after).first { predicate(found[$0]) }!
    }
}

// MARK: - A stand-in for bgworkerd's bus service

/// One worker of the stand-in, as its properties say.
struct WorkerSeed: Sendable {
    var name: String
    var state: String
    var enabled: Bool
    var pid: UInt32 = 0
    var restarts: UInt32 = 0
    var lastExit: String = ""
    var runOn: String = "primary"
    var stateChangedAt: UInt64 = 1_700_000_000_000_000
    /// The readiness properties, exported only when set (nil: a daemon without them, as before).
    var statusText: String? = nil
    var readyAt: UInt64? = nil
}

/// Our own implementation of the org.example.BgWorker contract, on our DBus module: enough
/// behaviour to drive the clients before and beside the real daemon (fixed pids, no processes).
final class StandInDaemon: Sendable {
    static let service = BgWorkerBus.busName
    static let managerPath = try! ObjectPath(BgWorkerBus.managerPath)
    static let managerInterface = BgWorkerBus.managerInterface
    static let workerInterface = BgWorkerBus.workerInterface
    static let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    let fleet: Fleet
    let manager: ExportedObject
    private let current = Mutex<DBusConnection?>(nil)

    /// The worker objects and what the methods do to them.
    final class Fleet: Sendable {
        let workers: [String: ExportedObject]
        /// When set, Reload fails with InvalidConfig and this reason.
        let reloadFailure = Mutex<String?>(nil)

        init(_ seeds: [WorkerSeed]) throws {
            var workers: [String: ExportedObject] = [:]
            for seed in seeds { workers[seed.name] = try StandInDaemon.workerObject(seed) }
            self.workers = workers
        }

        func worker(_ name: String) throws -> ExportedObject {
            guard let object = workers[name] else {
                throw DBusError(BgWorkerBus.ErrorName.noSuchWorker, "no worker named '\(name)'")
            }
            return object
        }

        /// A state change of a worker: its properties, then WorkerStateChanged from `manager`.
        func transition(_ name: String, to state: String, pid: UInt32, reason: String, enabled: Bool? = nil,
                        manager: ExportedObject) throws {
            let object = try worker(name)
            var changes: [(String, DBusValue)] = [("State", .string(state)), ("Pid", .uint32(pid)),
                                                  ("StateChangedAt", .uint64(UInt64(Date().timeIntervalSince1970 * 1_000_000)))]
            if let enabled { changes.append(("Enabled", .bool(enabled))) }
            try object.setProperties(StandInDaemon.workerInterface, changes)
            try manager.emitSignal(interface: StandInDaemon.managerInterface, member: "WorkerStateChanged",
                                   arguments: [.string(name), .string(state), .uint32(pid), .string(reason)])
        }

        func enable(_ name: String, manager: ExportedObject) throws {
            try worker(name).setProperty(StandInDaemon.workerInterface, "Restarts", .uint32(0))
            try transition(name, to: "running", pid: 4242, reason: "enabled", enabled: true, manager: manager)
        }

        func disable(_ name: String, manager: ExportedObject) throws {
            let object = try worker(name)
            let properties = object.properties(StandInDaemon.workerInterface)
            if properties["State"]?.stringValue != "disabled" {
                try transition(name, to: "stopping", pid: properties["Pid"]?.uint32Value ?? 0, reason: "disabled", manager: manager)
            }
            try transition(name, to: "disabled", pid: 0, reason: "disabled", enabled: false, manager: manager)
        }

        func restart(_ name: String, manager: ExportedObject) throws {
            let object = try worker(name)
            guard object.property(StandInDaemon.workerInterface, "Enabled")?.boolValue == true else {
                throw DBusError(BgWorkerBus.ErrorName.disabled, "worker '\(name)' is disabled")
            }
            try object.setProperty(StandInDaemon.workerInterface, "Restarts", .uint32(0))
            try transition(name, to: "stopping", pid: 4242, reason: "restart", manager: manager)
            try transition(name, to: "running", pid: 4343, reason: "restarted", manager: manager)
        }
    }

    init(workers seeds: [WorkerSeed], logLevel: String = "info", haRole: String = "standalone") throws {
        fleet = try Fleet(seeds)
        manager = try ExportedObject(path: Self.managerPath, interfaces: [Self.managerInterface(fleet, logLevel: logLevel, haRole: haRole)],
                                     objectManager: true)
    }

    static func start(on bus: PrivateBus, workers: [WorkerSeed], logLevel: String = "info",
                      haRole: String = "standalone") async throws -> StandInDaemon {
        let daemon = try StandInDaemon(workers: workers, logLevel: logLevel, haRole: haRole)
        try await daemon.attach(to: bus.address)
        return daemon
    }

    var connection: DBusConnection? { current.withLock { $0 } }

    /// Connects to `address`, exports every object, then takes the name (as the daemon does).
    func attach(to address: String) async throws {
        let connection = try await DBusConnection.connect(.address(address), timeout: .seconds(10))
        try connection.export(manager)
        for object in fleet.workers.values { try connection.export(object) }
        let reply = try await connection.requestName(Self.service, flags: [.doNotQueue])
        guard reply == .primaryOwner else { throw TestProcessError("the stand-in could not own \(Self.service): \(reply)") }
        current.withLock { $0 = connection }
    }

    /// Leaves the bus.
    func detach() {
        current.withLock { c in
            c?.close()
            c = nil
        }
    }

    /// Sets the log level as the daemon would (stored, PropertiesChanged).
    func setLogLevel(_ level: String) throws {
        try manager.setProperty(Self.managerInterface, "LogLevel", .string(level))
    }

    func setHARole(_ role: String) throws {
        try manager.setProperty(Self.managerInterface, "HARole", .string(role))
        try manager.emitSignal(interface: Self.managerInterface, member: "HARoleChanged", arguments: [.string(role)])
    }

    func transition(_ name: String, to state: String, pid: UInt32, reason: String) throws {
        try fleet.transition(name, to: state, pid: pid, reason: reason, manager: manager)
    }

    private static func managerInterface(_ fleet: Fleet, logLevel: String, haRole: String) -> DBusInterface {
        let nameArg = [DBusArgument("name", .string)]
        func action(_ member: String, _ body: @escaping @Sendable (String, ExportedObject) throws -> Void) -> DBusMethod {
            DBusMethod(member, in: nameArg) { call in
                try body(call.arguments[0].stringValue ?? "", call.object)
                return []
            }
        }
        return DBusInterface(
            Self.managerInterface,
            methods: [
                action("Enable") { try fleet.enable($0, manager: $1) },
                action("Disable") { try fleet.disable($0, manager: $1) },
                action("Restart") { try fleet.restart($0, manager: $1) },
                DBusMethod("Reload") { _ in
                    if let reason = fleet.reloadFailure.withLock({ $0 }) {
                        throw DBusError(BgWorkerBus.ErrorName.invalidConfig, reason)
                    }
                    return []
                },
                DBusMethod("ListWorkers", out: [DBusArgument("workers", .array(.structure([.string, .string, .bool, .uint32, .objectPath])))]) { _ in
                    let rows = fleet.workers.sorted { $0.key < $1.key }.map { name, object -> DBusValue in
                        let p = object.properties(Self.workerInterface)
                        return .structure([.string(name), p["State"] ?? .string(""), p["Enabled"] ?? .bool(false),
                                           p["Pid"] ?? .uint32(0), .objectPath(object.path)])
                    }
                    return [.array(.structure([.string, .string, .bool, .uint32, .objectPath]), rows)]
                },
                DBusMethod("GetWorker", in: nameArg, out: [DBusArgument("path", .objectPath)]) { call in
                    [.objectPath(try fleet.worker(call.arguments[0].stringValue ?? "").path)]
                },
            ],
            properties: [
                DBusProperty("Version", .string, initial: .string("0.0-stand-in"), changeSignal: .const),
                DBusProperty("HARole", .string, initial: .string(haRole)),
                DBusProperty("LogLevel", .string, access: .readwrite, initial: .string(logLevel), set: { value, _ in
                    guard let level = value.stringValue, levels.contains(level) else {
                        throw DBusError.invalidArgs("unknown log level \(value)")
                    }
                    return value
                }),
                DBusProperty("Runner", .string, initial: .string("process")),
            ],
            signals: [
                DBusSignalDeclaration("WorkerStateChanged", [DBusArgument("name", .string), DBusArgument("state", .string),
                                                             DBusArgument("pid", .uint32), DBusArgument("reason", .string)]),
                DBusSignalDeclaration("HARoleChanged", [DBusArgument("role", .string)]),
            ])
    }

    fileprivate static func workerObject(_ seed: WorkerSeed) throws -> ExportedObject {
        let path = try ObjectPath(String(BgWorkerBus.workerPathPrefix.dropLast())).appending(ObjectPath.escapeElement(seed.name))
        return try ExportedObject(path: path, interfaces: [
            DBusInterface(
                workerInterface,
                properties: [
                    DBusProperty("Name", .string, initial: .string(seed.name), changeSignal: .const),
                    DBusProperty("State", .string, initial: .string(seed.state)),
                    DBusProperty("Enabled", .bool, initial: .bool(seed.enabled)),
                    DBusProperty("Pid", .uint32, initial: .uint32(seed.pid)),
                    DBusProperty("Restarts", .uint32, initial: .uint32(seed.restarts)),
                    DBusProperty("LastExit", .string, initial: .string(seed.lastExit)),
                    DBusProperty("RunOn", .string, initial: .string(seed.runOn)),
                    DBusProperty("StateChangedAt", .uint64, initial: .uint64(seed.stateChangedAt)),
                ] + (seed.statusText.map { [DBusProperty("StatusText", .string, initial: .string($0))] } ?? [])
                  + (seed.readyAt.map { [DBusProperty("ReadyAt", .uint64, initial: .uint64($0))] } ?? [])),
        ])
    }
}
