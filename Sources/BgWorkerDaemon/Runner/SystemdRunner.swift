// The systemd runner: each worker is a transient unit `bgworker-<name>.service` of the systemd
// that is PID 1, created with StartTransientUnit on systemd's bus. Workers so outlive a daemon
// that is SIGKILLed, and a new daemon adopts the units whose definition hash still matches.
//
// Every unit is followed through one ordered stream: a `watchNameOwner` on
// org.freedesktop.systemd1 with two rules, the unit's PropertiesChanged and the JobRemoved
// signals naming the unit. One stream keeps systemd's order (a unit's properties are flushed
// before its job's JobRemoved), which two separate subscriptions would not; following the
// owner also tells a systemd that re-executed (daemon-reexec) so the state is read anew. The
// stream is in place before the call that creates a job, and before the read of an adopted
// unit's state, so nothing that happens in between is lost.

import BgWorkerCore
import DBus
import Glibc
import Logging

public final class SystemdRunner: WorkerRunner {
    public let kind = "systemd"
    public let events: AsyncStream<RunnerEvent>
    private let connection: DBusConnection
    private let table: SystemdUnitTable
    private let logger: Logger
    private let closesConnection: Bool
    /// Where workers without a `working-directory` run: the daemon's directory when it started.
    private let daemonDirectory: String?

    /// A runner on `connection`, a connection to the bus where the systemd that is PID 1 answers
    /// (the system bus). The daemon passes its own connection when it serves on the system bus,
    /// and a connection of the runner's own otherwise. Nothing is sent until the first `start`
    /// or `adopt` (which subscribe to systemd's signals).
    public convenience init(connection: DBusConnection, logger: Logger = Logger(label: "bgworkerd.systemd-runner")) {
        self.init(connection: connection, closesConnection: false, logger: logger)
    }

    /// `closesConnection`: the connection is the runner's own; `shutdown` closes it.
    init(connection: DBusConnection, closesConnection: Bool, logger: Logger) {
        let (stream, continuation) = AsyncStream.makeStream(of: RunnerEvent.self)
        events = stream
        self.connection = connection
        self.closesConnection = closesConnection
        self.logger = logger
        table = SystemdUnitTable(connection: connection, events: continuation, logger: logger)
        daemonDirectory = currentDirectory()
    }

    public func start(_ spec: LaunchSpec) async throws(RunnerError) -> Int32 {
        guard isValidWorkerName(spec.name) else {
            throw RunnerError(.invalidSpec, worker: spec.name, context: "not a valid worker name")
        }
        guard let program = spec.argv.first, program.hasPrefix("/") else {
            throw RunnerError(.invalidSpec, worker: spec.name, context: "argv[0] must be an absolute path")
        }
        let unit = WorkerUnit(worker: spec.name)
        let id = try await table.reserve(unit, reportsExit: true)
        do {
            try await follow(id: id, unit: unit)
            let job = try await createUnit(unit, spec: spec)
            logger.debug("start job queued", metadata: ["worker": "\(spec.name)", "unit": "\(unit.name)", "job": "\(job)"])
            return try await table.waitForStart(id: id, job: job).get()
        } catch {
            await table.discard(id: id)
            throw error
        }
    }

    public func stop(name: String) async {
        guard let unit = await table.requestStop(name: name) else { return }
        await stopUnit(unit, worker: name)
    }

    public func adopt(_ specs: [LaunchSpec]) async -> [String: Int32] {
        let listed: [ListedUnit]
        do {
            try await table.ensureSubscribed()
            listed = try await listWorkerUnits()
        } catch {
            logger.error("cannot list the worker units: \(error)")
            return [:]
        }
        let specs = Dictionary(specs.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        var adopted: [String: Int32] = [:]
        var leaving: [UInt64] = []
        for listedUnit in listed {
            guard let worker = workerName(fromSystemdUnitName: listedUnit.name) else {
                logger.notice("leaving alone a unit bgworkerd does not name", metadata: ["unit": "\(listedUnit.name)"])
                continue
            }
            switch await adoptOrRemove(WorkerUnit(worker: worker), spec: specs[worker]) {
            case .adopted(let pid): adopted[worker] = pid
            case .leaving(let id): leaving.append(id)
            case .nothing: break
            }
        }
        // The supervisor starts changed workers right after: their old units must be gone first.
        await withTaskGroup(of: Void.self) { group in
            for id in leaving { group.addTask { [table] in await table.waitUntilGone(id: id) } }
        }
        return adopted
    }

    public func shutdown() async {
        let units = await table.beginShutdown()
        await withTaskGroup(of: Void.self) { group in
            for (worker, unit) in units { group.addTask { await self.stopUnit(unit, worker: worker) } }
        }
        await table.waitUntilEmpty()
        await table.finishEvents()
        if closesConnection {
            connection.close()
        } else {
            _ = try? await connection.call(destination: SystemdBus.name, path: SystemdBus.managerPath,
                                           interface: SystemdBus.manager, member: "Unsubscribe")
        }
    }

    // MARK: Steps

    /// Subscribes the unit's stream and starts the task that feeds it to the table.
    private func follow(id: UInt64, unit: WorkerUnit) async throws(RunnerError) {
        do {
            try await table.ensureSubscribed()
            let watch = try await connection.watchNameOwner(SystemdBus.name, signals: [
                MatchRule(path: unit.path, interface: SystemdBus.properties, member: "PropertiesChanged"),
                MatchRule(path: SystemdBus.managerPath, interface: SystemdBus.manager, member: "JobRemoved",
                          arguments: [2: unit.name]),
            ])
            guard await table.attach(watch, id: id) else {
                watch.cancel()
                throw RunnerError(.shutDown, worker: unit.worker, context: "the runner is shut down")
            }
            Task { [table, logger] in
                for await event in watch {
                    switch event {
                    case .signal(let signal):
                        await table.handle(signal, id: id)
                    case .ownerReply(let reply):
                        await table.handleReply(reply, id: id)
                    case .ownerChanged(_, let owner?):
                        // systemd re-executed or restarted: signals may have been lost meanwhile.
                        logger.notice("systemd has a new bus connection; reading the unit's state again",
                                      metadata: ["unit": "\(unit.name)", "owner": "\(owner)"])
                        await table.resubscribe()
                        await table.refresh(id: id)
                    case .ownerChanged(_, nil), .ignoredSignal:
                        break
                    }
                }
                await table.streamEnded(id: id)
            }
        } catch let error as RunnerError {
            throw error
        } catch {
            throw RunnerError(.unavailable, worker: unit.worker, context: "following \(unit.name) on systemd's bus: \(error)")
        }
    }

    /// StartTransientUnit; returns the start job's path. A unit of that name left over in a
    /// final state (failed, or inactive but still loaded) is reset and the call made once more.
    private func createUnit(_ unit: WorkerUnit, spec: LaunchSpec) async throws(RunnerError) -> String {
        let properties = WorkerUnit.properties(for: spec, daemonDirectory: daemonDirectory)
        var retried = false
        while true {
            do {
                // Mode "fail": a start must not cancel queued jobs of the slice or of shutdown.target
                // ("replace" would, and could undo a system shutdown).
                let reply = try await connection.call(
                    destination: SystemdBus.name, path: SystemdBus.managerPath, interface: SystemdBus.manager,
                    member: "StartTransientUnit",
                    arguments: [.string(unit.name), .string("fail"), .array(unitPropertyType, properties),
                                .array(auxiliaryUnitType, [])])
                guard let job = reply.first?.objectPathValue else {
                    throw RunnerError(.spawnFailed, worker: unit.worker, context: "StartTransientUnit \(unit.name): unexpected reply \(reply)")
                }
                return job.rawValue
            } catch let error as DBusError where error.name == SystemdBus.unitExists && !retried {
                retried = true
                let state = (try? await readProperty(unit, SystemdBus.unit, "ActiveState"))?.stringValue ?? ""
                guard state == "failed" || state == "inactive" else {
                    throw RunnerError(.alreadyRunning, worker: unit.worker,
                                      context: "\(unit.name) exists already (\(state.isEmpty ? "state unknown" : state)) and was not started by this runner")
                }
                logger.notice("resetting a leftover unit", metadata: ["unit": "\(unit.name)", "state": "\(state)"])
                await resetFailed(unit)
            } catch let error as RunnerError {
                throw error
            } catch let error as DBusError {
                throw RunnerError(.spawnFailed, worker: unit.worker, context: "StartTransientUnit \(unit.name): \(error)")
            } catch {
                throw RunnerError(.unavailable, worker: unit.worker, context: "StartTransientUnit \(unit.name): \(error)")
            }
        }
    }

    private func stopUnit(_ unit: WorkerUnit, worker: String) async {
        await BgWorkerDaemon.stopUnit(unit, on: connection, logger: logger)
    }

    private enum AdoptionResult {
        case adopted(Int32)
        /// Asked to stop (or found stopping); the table entry `id` ends when it is gone.
        case leaving(UInt64)
        case nothing
    }

    /// Adopts the unit when its worker exists, it is active and its hash matches; stops it otherwise.
    private func adoptOrRemove(_ unit: WorkerUnit, spec: LaunchSpec?) async -> AdoptionResult {
        // Already followed (adopt called twice): nothing to decide.
        guard let id = try? await table.reserve(unit, reportsExit: spec != nil) else { return .nothing }
        do {
            try await follow(id: id, unit: unit)
        } catch {
            logger.warning("cannot follow a worker unit", metadata: ["unit": "\(unit.name)", "error": "\(error)"])
            await table.discard(id: id)
            return .nothing
        }
        // Read through the unit's stream, once it is in place: the values are those at the
        // reply's place among the unit's signals, and every change after it is seen.
        guard await table.readState(id: id) else {
            logger.warning("cannot read a worker unit's state; leaving it alone", metadata: ["unit": "\(unit.name)"])
            await table.discard(id: id)
            return .nothing
        }
        switch await table.decideAdoption(id: id, definitionHash: spec?.definitionHash) {
        case .adopted(let pid):
            logger.info("adopted a running worker", metadata: ["worker": "\(unit.worker)", "unit": "\(unit.name)", "pid": "\(pid)"])
            return .adopted(pid)
        case .ended(let state):
            if state == "failed" { await resetFailed(unit) }
            return .nothing
        case .leave(let state, let why):
            logger.notice("stopping a worker unit left by a previous daemon: \(why)",
                          metadata: ["worker": "\(unit.worker)", "unit": "\(unit.name)", "state": "\(state)"])
            await stopUnit(unit, worker: unit.worker)
            return .leaving(id)
        }
    }

    private func resetFailed(_ unit: WorkerUnit) async {
        _ = try? await connection.call(destination: SystemdBus.name, path: SystemdBus.managerPath,
                                       interface: SystemdBus.manager, member: "ResetFailedUnit",
                                       arguments: [.string(unit.name)])
    }

    private struct ListedUnit {
        var name: String
        var activeState: String
    }

    /// Loaded units named `bgworker-*.service`.
    private func listWorkerUnits() async throws -> [ListedUnit] {
        let pattern = systemdUnitPrefix + "*" + systemdUnitSuffix
        let reply: [DBusValue]
        do {
            reply = try await connection.call(destination: SystemdBus.name, path: SystemdBus.managerPath,
                                              interface: SystemdBus.manager, member: "ListUnitsByPatterns",
                                              arguments: [.stringArray([]), .stringArray([pattern])])
        } catch let error as DBusError where error.name == DBusError.Name.unknownMethod {
            // systemd before 230 has no ListUnitsByPatterns.
            reply = try await connection.call(destination: SystemdBus.name, path: SystemdBus.managerPath,
                                              interface: SystemdBus.manager, member: "ListUnits")
        }
        // a(ssssssouso): name, description, load state, active state, sub state, following, path, ...
        let rows = reply.first?.arrayValue ?? []
        return rows.compactMap { row in
            guard let fields = row.structureValue, fields.count >= 4, let name = fields[0].stringValue,
                  name.hasPrefix(systemdUnitPrefix), name.hasSuffix(systemdUnitSuffix)
            else { return nil }
            return ListedUnit(name: name, activeState: fields[3].stringValue ?? "")
        }
    }

    private func readProperty(_ unit: WorkerUnit, _ interface: String, _ name: String) async throws -> DBusValue {
        try await SystemdBus.readProperty(on: connection, path: unit.path, interface: interface, name: name)
    }
}

/// StopUnit with mode "replace": a stop wins over a queued start. systemd sends SIGTERM (and
/// SIGCONT) to the whole cgroup, SIGKILL after TimeoutStopUSec. If systemd refuses the stop job,
/// KillUnit sends SIGKILL to every process of the unit at once.
func stopUnit(_ unit: WorkerUnit, on connection: DBusConnection, logger: Logger) async {
    do {
        _ = try await connection.call(destination: SystemdBus.name, path: SystemdBus.managerPath,
                                      interface: SystemdBus.manager, member: "StopUnit",
                                      arguments: [.string(unit.name), .string("replace")])
    } catch let error as DBusError where error.name == SystemdBus.noSuchUnit {
        // Gone already: its end has been (or is being) reported.
    } catch {
        logger.error("StopUnit failed; killing the unit's processes", metadata: ["unit": "\(unit.name)", "error": "\(error)"])
        _ = try? await connection.call(destination: SystemdBus.name, path: SystemdBus.managerPath,
                                       interface: SystemdBus.manager, member: "KillUnit",
                                       arguments: [.string(unit.name), .string("all"), .int32(SIGKILL)])
    }
}

private let unitPropertyType = DBusType.structure([.string, .variant])
private let auxiliaryUnitType = DBusType.structure([.string, .array(.structure([.string, .variant]))])

private func currentDirectory() -> String? {
    guard let pointer = getcwd(nil, 0) else { return nil }
    defer { free(pointer) }
    let path = String(cString: pointer)
    // A directory outside our mount namespace's root reads "(unreachable)/...".
    return path.hasPrefix("/") ? path : nil
}
