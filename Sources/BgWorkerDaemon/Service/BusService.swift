// The org.example.BgWorker service: the manager object and one object per worker, as the
// contract (docs/interface.md, dbus/*.xml) describes them. Methods only check who calls and
// hand over to the supervisor; property values live in the exported objects and the supervisor
// updates them, so reads never wait for the supervisor.
import BgWorkerAPI
import BgWorkerCore
import DBus

extension FleetError {
    /// The contract's error reply; an unknown name gets the closest of `workerNames` suggested.
    func busError(workerNames: [String]) -> DBusError {
        switch self {
        case .noSuchWorker(let name):
            DBusError(BgWorkerBus.ErrorName.noSuchWorker, description + didYouMean(name, among: workerNames))
        case .disabled: DBusError(BgWorkerBus.ErrorName.disabled, description)
        }
    }
}

/// The values a worker object shows, from the fleet's status of the worker.
struct WorkerPropertyValues {
    static func all(of status: WorkerStatus, stateChangedAt: UInt64) -> [(String, DBusValue)] {
        [
            ("Name", .string(status.name)),
            ("State", .string(status.state.rawValue)),
            ("Enabled", .bool(status.enabled)),
            ("Pid", .uint32(busPid(status.pid))),
            ("Restarts", .uint32(status.restarts)),
            ("LastExit", .string(status.lastExit?.description ?? "")),
            ("RunOn", .string(status.definition.runOn.rawValue)),
            ("StateChangedAt", .uint64(stateChangedAt)),
            ("LogLevel", .string(status.logLevel?.rawValue ?? "")),
            ("EffectiveLogLevel", .string(status.effectiveLogLevel.rawValue)),
            ("StateReason", .string(status.reason)),
            ("StatusText", .string(status.statusText)),
            // While running, the last state change was the one into `running`.
            ("ReadyAt", .uint64(status.state == .running ? stateChangedAt : 0)),
        ]
    }

    static func value(of property: WorkerProperty) -> (String, DBusValue) {
        switch property {
        case .enabled(let enabled): ("Enabled", .bool(enabled))
        case .pid(let pid): ("Pid", .uint32(busPid(pid)))
        case .restarts(let count): ("Restarts", .uint32(count))
        case .lastExit(let exit): ("LastExit", .string(exit?.description ?? ""))
        case .runOn(let runOn): ("RunOn", .string(runOn.rawValue))
        case .logLevel(let level): ("LogLevel", .string(level?.rawValue ?? ""))
        case .statusText(let text): ("StatusText", .string(text))
        case .effectiveLogLevel(let level): ("EffectiveLogLevel", .string(level.rawValue))
        }
    }
}

/// A `LogLevel` value from the bus; InvalidArgs names the known levels.
func parseLogLevel(_ value: DBusValue, allowEmpty: Bool) throws(DBusError) -> LogLevel? {
    if allowEmpty, value.stringValue == "" { return nil }
    guard let text = value.stringValue, let level = LogLevel(parsing: text) else {
        let known = LogLevel.allCases.map(\.rawValue).joined(separator: " ")
        let empty = allowEmpty ? " (or \"\" to follow the manager's)" : ""
        throw DBusError.invalidArgs("unknown log level '\(value.stringValue ?? "?")'; known: \(known)\(empty)")
    }
    return level
}

/// 0 when there is no process (the contract's `Pid`).
func busPid(_ pid: Int32?) -> UInt32 {
    pid.map { UInt32(bitPattern: $0) } ?? 0
}

/// Builds the exported objects. Handlers hold the supervisor weakly: the supervisor holds the
/// objects, and a call that arrives while the daemon winds down gets an error, not a crash.
struct BusServiceFactory: Sendable {
    weak var supervisor: Supervisor?
    let access: AccessPolicy

    private func requireSupervisor() throws(DBusError) -> Supervisor {
        guard let supervisor else { throw DBusError.failed("bgworkerd is shutting down") }
        return supervisor
    }

    /// The name argument of a manager method (its type was checked by the DBus layer).
    private static func nameArgument(_ call: MethodCall) throws(DBusError) -> String {
        guard let name = call.arguments.first?.stringValue else { throw DBusError.invalidArgs("expected a worker name") }
        return name
    }

    /// Runs before a state-changing method's argument checks (see `DBusMethod.authorize`): a
    /// caller who may not change state gets AccessDenied whatever the arguments.
    private var authorize: @Sendable (MethodCall) async throws -> Void {
        { [access] call in try await access.authorize(call) }
    }

    private var authorizeRoot: @Sendable (MethodCall) async throws -> Void {
        { [access] call in try await access.authorizeRoot(call) }
    }

    /// `ListInhibitors`' row: who, why, uid, pid, since (µs since the epoch).
    private static let inhibitorRow = DBusType.structure([.string, .string, .uint32, .uint32, .uint64])

    /// The manager object `/org/example/BgWorker`.
    func makeManager(version: String, runner: String, logLevel: LogLevel, role: HARole, maintenance: Bool) throws -> ExportedObject {
        let nameArgument = [DBusArgument("name", .string)]
        let interface = DBusInterface(
            BgWorkerBus.managerInterface,
            methods: [
                DBusMethod("Enable", in: nameArgument, authorize: authorize) { call in
                    try await requireSupervisor().enable(try Self.nameArgument(call))
                    return []
                },
                DBusMethod("Disable", in: nameArgument, authorize: authorize) { call in
                    try await requireSupervisor().disable(try Self.nameArgument(call))
                    return []
                },
                DBusMethod("Restart", in: nameArgument, authorize: authorize) { call in
                    try await requireSupervisor().restart(try Self.nameArgument(call))
                    return []
                },
                DBusMethod("Stop", in: nameArgument, authorize: authorize) { call in
                    try await requireSupervisor().stop(try Self.nameArgument(call))
                    return []
                },
                DBusMethod("Start", in: nameArgument, authorize: authorize) { call in
                    try await requireSupervisor().start(try Self.nameArgument(call))
                    return []
                },
                DBusMethod("Reload", authorize: authorize) { call in
                    try await requireSupervisor().reloadForBus()
                    return []
                },
                // Root only, not the admin group: the role decides where primary workers run.
                DBusMethod("SetHARole", in: [DBusArgument("role", .string)], authorize: authorizeRoot) { call in
                    try await requireSupervisor().setHARole(call.arguments.first?.stringValue ?? "", by: call.sender)
                    return []
                },
                DBusMethod(
                    "ListWorkers",
                    out: [DBusArgument("workers", .array(.structure([.string, .string, .bool, .uint32, .objectPath])))]
                ) { _ in
                    let workers = try await requireSupervisor().workerList()
                    var rows: [DBusValue] = []
                    for worker in workers {
                        rows.append(.structure([
                            .string(worker.name), .string(worker.state.rawValue), .bool(worker.enabled),
                            .uint32(busPid(worker.pid)), .objectPath(try ObjectPath(BgWorkerBus.workerPath(worker.name))),
                        ]))
                    }
                    return [.array(.structure([.string, .string, .bool, .uint32, .objectPath]), rows)]
                },
                DBusMethod("GetWorker", in: nameArgument, out: [DBusArgument("path", .objectPath)]) { call in
                    let name = try Self.nameArgument(call)
                    let supervisor = try requireSupervisor()
                    guard await supervisor.isConfigured(name) else {
                        throw FleetError.noSuchWorker(name).busError(workerNames: await supervisor.workerNames())
                    }
                    return [.objectPath(try ObjectPath(BgWorkerBus.workerPath(name)))]
                },
                // Authorized first: a caller who may not change state gets no pipe at all.
                DBusMethod(
                    "Inhibit", in: [DBusArgument("who", .string), DBusArgument("why", .string)],
                    out: [DBusArgument("fd", .unixFD)], authorize: authorize
                ) { call in
                    let who = call.arguments.first?.stringValue ?? ""
                    let why = call.arguments.count > 1 ? call.arguments[1].stringValue ?? "" : ""
                    let caller: Credentials
                    do {
                        caller = try await call.connection.credentials(of: call.sender)
                    } catch {
                        throw DBusError.failed("cannot tell who the caller is: \(error)")
                    }
                    let fd = try await requireSupervisor().inhibit(who: who, why: why, uid: caller.uid, pid: caller.pid ?? 0)
                    return [.unixFD(fd)]
                },
                DBusMethod("ListInhibitors", out: [DBusArgument("inhibitors", .array(Self.inhibitorRow))]) { _ in
                    let rows = try await requireSupervisor().inhibitorList().map { inhibitor -> DBusValue in
                        .structure([.string(inhibitor.who), .string(inhibitor.why), .uint32(inhibitor.uid),
                                    .uint32(inhibitor.pid), .uint64(inhibitor.since)])
                    }
                    return [.array(Self.inhibitorRow, rows)]
                },
                // Anyone may read, as ListWorkers.
                DBusMethod(
                    "Logs", in: [DBusArgument("name", .string), DBusArgument("lines", .uint32)],
                    out: [DBusArgument("output", .array(.structure([.uint64, .string])))]
                ) { call in
                    let name = try Self.nameArgument(call)
                    let count = call.arguments.count > 1 ? call.arguments[1].uint32Value ?? 0 : 0
                    let lines = try await requireSupervisor().logs(name, count: Int(count))
                    return [.array(.structure([.uint64, .string]), lines.map { .structure([.uint64($0.time), .string($0.text)]) })]
                },
                // Beyond the contract (docs/bgworkerctl.md): `logs -f` where no journal runs.
                // Anyone may read, as Logs; at most WorkerLogBuffers.maxFollowers at once.
                DBusMethod(
                    "FollowLogs", in: [DBusArgument("name", .string), DBusArgument("lines", .uint32)],
                    out: [DBusArgument("output", .unixFD)]
                ) { call in
                    let name = try Self.nameArgument(call)
                    let count = call.arguments.count > 1 ? call.arguments[1].uint32Value ?? 0 : 0
                    let fd = try await requireSupervisor().followLogs(name, count: Int(count))
                    return [.unixFD(UnixFD(taking: fd))]
                },
            ],
            properties: [
                DBusProperty("Version", .string, initial: .string(version), changeSignal: .const),
                DBusProperty("HARole", .string, initial: .string(role.rawValue)),
                // Authorized by `authorizeSet` below, before the type check.
                DBusProperty("LogLevel", .string, access: .readwrite, initial: .string(logLevel.rawValue)) { value, call in
                    guard let level = try parseLogLevel(value, allowEmpty: false) else { throw DBusError.invalidArgs("empty log level") }
                    try await requireSupervisor().setLogLevel(level, by: call.sender)
                    return .string(level.rawValue)
                },
                DBusProperty("Runner", .string, initial: .string(runner)),
                DBusProperty("Maintenance", .bool, initial: .bool(maintenance)),
            ],
            signals: [
                DBusSignalDeclaration(
                    BgWorkerBus.Signal.workerStateChanged,
                    [DBusArgument("name", .string), DBusArgument("state", .string), DBusArgument("pid", .uint32),
                     DBusArgument("reason", .string)]),
                DBusSignalDeclaration(BgWorkerBus.Signal.haRoleChanged, [DBusArgument("role", .string)]),
            ],
            authorizeSet: { call in try await access.authorize(call) })
        return try ExportedObject(path: ObjectPath(BgWorkerBus.managerPath), interfaces: [interface], objectManager: true)
    }

    /// A worker object `/org/example/BgWorker/worker/<label>`.
    func makeWorker(_ status: WorkerStatus, stateChangedAt: UInt64) throws -> ExportedObject {
        let name = status.name
        var properties: [DBusProperty] = []
        for (property, value) in WorkerPropertyValues.all(of: status, stateChangedAt: stateChangedAt) {
            if property == "LogLevel" {
                // Authorized by `authorizeSet` below, before the type check; "" clears it.
                properties.append(DBusProperty(property, .string, access: .readwrite, initial: value) { value, call in
                    let level = try parseLogLevel(value, allowEmpty: true)
                    try await requireSupervisor().setWorkerLogLevel(name, level, by: call.sender)
                    return .string(level?.rawValue ?? "")
                })
                continue
            }
            properties.append(DBusProperty(property, value.type, initial: value, changeSignal: property == "Name" ? .const : .emits))
        }
        let interface = DBusInterface(
            BgWorkerBus.workerInterface,
            methods: [
                DBusMethod("Enable", authorize: authorize) { call in
                    try await requireSupervisor().enable(name)
                    return []
                },
                DBusMethod("Disable", authorize: authorize) { call in
                    try await requireSupervisor().disable(name)
                    return []
                },
                DBusMethod("Restart", authorize: authorize) { call in
                    try await requireSupervisor().restart(name)
                    return []
                },
                DBusMethod("Start", authorize: authorize) { call in
                    try await requireSupervisor().start(name)
                    return []
                },
                DBusMethod("Stop", authorize: authorize) { call in
                    try await requireSupervisor().stop(name)
                    return []
                },
            ],
            properties: properties,
            authorizeSet: { call in try await access.authorize(call) })
        return try ExportedObject(path: ObjectPath(BgWorkerBus.workerPath(name)), interfaces: [interface])
    }
}
