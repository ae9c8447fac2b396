import BgWorkerAPI
import DBus

/// bgworkerd's names on the bus (see the project's interface contract).
enum Service {
    static let name = BgWorkerBus.busName
    static let managerPath = try! ObjectPath(BgWorkerBus.managerPath)
    static let managerInterface = BgWorkerBus.managerInterface
    static let workerInterface = BgWorkerBus.workerInterface
    static let properties = "org.freedesktop.DBus.Properties"
    static let noSuchWorker = BgWorkerBus.ErrorName.noSuchWorker
}

/// The manager's properties.
struct ManagerInfo {
    var version: String
    var haRole: String
    var runner: String
    var logLevel: String
    /// nil from a daemon without maintenance mode.
    var maintenance: Bool?

    init(_ properties: [String: DBusValue]) {
        func text(_ key: String) -> String { properties[key]?.unwrappingVariant.stringValue ?? "" }
        version = text("Version")
        haRole = text("HARole")
        runner = text("Runner")
        logLevel = text("LogLevel")
        maintenance = properties["Maintenance"]?.unwrappingVariant.boolValue
    }
}

/// A worker object's properties. Values of an unexpected type read as empty or zero: a daemon
/// that sends something odd gets an odd table, never a crash.
struct WorkerInfo {
    var path: String
    var name: String
    var state: String
    var enabled: Bool
    var pid: UInt32
    var restarts: UInt32
    var lastExit: String
    var runOn: String
    /// Microseconds since the Unix epoch; 0 when unknown.
    var stateChangedAt: UInt64
    /// The worker's own level ("": it follows the daemon's) and the one in force ("" from a
    /// daemon without per-worker levels).
    var logLevel: String
    var effectiveLogLevel: String
    /// Why it is in its state ("" from a daemon without it).
    var stateReason: String
    /// The last `STATUS=` of a notify worker; nil from a daemon without the readiness protocol.
    var statusText: String?
    /// When the current process became `running` (µs since the epoch; 0: not running); nil from
    /// a daemon without the readiness protocol.
    var readyAt: UInt64?

    init(path: String, properties: [String: DBusValue]) {
        func value(_ key: String) -> DBusValue? { properties[key]?.unwrappingVariant }
        self.path = path
        name = value("Name")?.stringValue ?? ""
        state = value("State")?.stringValue ?? ""
        enabled = value("Enabled")?.boolValue ?? false
        pid = value("Pid")?.uint32Value ?? 0
        restarts = value("Restarts")?.uint32Value ?? 0
        lastExit = value("LastExit")?.stringValue ?? ""
        runOn = value("RunOn")?.stringValue ?? ""
        stateChangedAt = value("StateChangedAt")?.uint64Value ?? 0
        logLevel = value("LogLevel")?.stringValue ?? ""
        effectiveLogLevel = value("EffectiveLogLevel")?.stringValue ?? ""
        stateReason = value("StateReason")?.stringValue ?? ""
        statusText = value("StatusText")?.stringValue
        readyAt = value("ReadyAt")?.uint64Value
    }
}

/// One output line of a worker (`Logs`): µs since the epoch and the text.
struct LogLine {
    var time: UInt64
    var text: String
}

/// One row of ListWorkers (`a(ssbuo)`).
struct ListedWorker {
    var name: String
    var state: String
    var enabled: Bool
    var pid: UInt32
    var path: String

    init?(_ row: DBusValue) {
        guard let fields = row.structureValue, fields.count == 5,
              let name = fields[0].stringValue, let state = fields[1].stringValue,
              let enabled = fields[2].boolValue, let pid = fields[3].uint32Value,
              let path = fields[4].objectPathValue
        else { return nil }
        self.name = name
        self.state = state
        self.enabled = enabled
        self.pid = pid
        self.path = path.rawValue
    }
}

/// One connection to the bus and the few calls the commands make on it.
///
/// Every call is sent with NO_AUTO_START: a read (or a change) never starts bgworkerd through
/// bus activation; a stopped daemon stays stopped and the answer is "not running".
struct ServiceClient {
    let connection: DBusConnection
    /// The timeout of reads (shell completion asks with a much shorter one).
    var timeout: Duration = Self.readTimeout

    /// Reads are quick; a state change waits for the worker to start or stop (up to its stop
    /// timeout), so it may take much longer.
    static let readTimeout: Duration = .seconds(25)
    static let changeTimeout: Duration = .seconds(300)

    func callManager(_ member: String, _ arguments: [DBusValue] = [], timeout: Duration? = nil) async throws -> [DBusValue] {
        try await call(Service.managerPath, Service.managerInterface, member, arguments, timeout: timeout)
    }

    /// A call on the daemon, never activating it.
    func call(_ path: ObjectPath, _ interface: String, _ member: String, _ arguments: [DBusValue] = [],
              timeout: Duration? = nil) async throws -> [DBusValue] {
        try await connection.call(destination: Service.name, path: path, interface: interface, member: member,
                                  arguments: arguments, timeout: timeout ?? self.timeout, autoStart: false)
    }

    func allProperties(of path: ObjectPath, _ interface: String) async throws -> [String: DBusValue] {
        let reply = try await call(path, Service.properties, "GetAll", [.string(interface)])
        guard let properties = reply.first?.stringKeyedDictionary else {
            throw DBusConnectionError(.invalidMessage, "GetAll of \(interface) answered \(reply)")
        }
        return properties
    }

    func managerProperty(_ name: String) async throws -> String {
        let reply = try await call(Service.managerPath, Service.properties, "Get", [.string(Service.managerInterface), .string(name)])
        guard let value = reply.first?.unwrappingVariant.stringValue else {
            throw DBusConnectionError(.invalidMessage, "\(name) is not a string: \(reply)")
        }
        return value
    }

    func setManagerProperty(_ name: String, _ value: String) async throws {
        try await setProperty(of: Service.managerPath, Service.managerInterface, name, value)
    }

    func setProperty(of path: ObjectPath, _ interface: String, _ name: String, _ value: String) async throws {
        _ = try await call(path, Service.properties, "Set", [.string(interface), .string(name), .variant(.string(value))],
                           timeout: Self.changeTimeout)
    }

    func manager() async throws -> ManagerInfo {
        ManagerInfo(try await allProperties(of: Service.managerPath, Service.managerInterface))
    }

    /// Every worker with all its properties, in one call (ObjectManager), sorted by name.
    func workers() async throws -> [WorkerInfo] {
        let reply = try await call(Service.managerPath, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")
        guard let objects = reply.first?.dictionaryEntries else {
            throw DBusConnectionError(.invalidMessage, "GetManagedObjects answered \(reply)")
        }
        return objects.compactMap { entry -> WorkerInfo? in
            guard let path = entry.key.objectPathValue,
                  let properties = entry.value.stringKeyedDictionary?[Service.workerInterface]?.stringKeyedDictionary
            else { return nil }
            return WorkerInfo(path: path.rawValue, properties: properties)
        }.sorted { $0.name < $1.name }
    }

    func list() async throws -> [ListedWorker] {
        let reply = try await callManager("ListWorkers")
        guard let rows = reply.first?.arrayValue else {
            throw DBusConnectionError(.invalidMessage, "ListWorkers answered \(reply)")
        }
        return rows.compactMap(ListedWorker.init)
    }

    /// GetWorker (NoSuchWorker for an unknown name), then the worker object's properties.
    func worker(named name: String) async throws -> WorkerInfo {
        let path = try await workerPath(name)
        return WorkerInfo(path: path.rawValue, properties: try await allProperties(of: path, Service.workerInterface))
    }

    /// FollowLogs (beyond the contract): a socket of the worker's last `count` lines and then
    /// each new one, one `FollowedLogRecord` per packet.
    func followLogs(of name: String, count: UInt32) async throws -> UnixFD {
        let reply = try await callManager("FollowLogs", [.string(name), .uint32(count)])
        guard let fd = reply.first?.unixFDValue else {
            throw DBusConnectionError(.invalidMessage, "FollowLogs answered \(reply)")
        }
        return fd
    }

    /// Logs: the worker's last `count` output lines, oldest first (NoSuchWorker for an unknown name).
    func logs(of name: String, count: UInt32) async throws -> [LogLine] {
        let reply = try await callManager("Logs", [.string(name), .uint32(count)])
        guard let rows = reply.first?.arrayValue else {
            throw DBusConnectionError(.invalidMessage, "Logs answered \(reply)")
        }
        return rows.compactMap { row in
            guard let fields = row.structureValue, fields.count == 2, let time = fields[0].uint64Value,
                  let text = fields[1].stringValue
            else { return nil }
            return LogLine(time: time, text: text)
        }
    }

    /// GetWorker: NoSuchWorker for an unknown name.
    func workerPath(_ name: String) async throws -> ObjectPath {
        let reply = try await callManager("GetWorker", [.string(name)])
        guard let path = reply.first?.objectPathValue else {
            throw DBusConnectionError(.invalidMessage, "GetWorker answered \(reply)")
        }
        return path
    }
}
