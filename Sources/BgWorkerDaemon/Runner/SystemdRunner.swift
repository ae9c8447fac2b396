// The systemd runner: each worker is a transient unit `bgworker-<name>.service` of the systemd
// that is PID 1, created with StartTransientUnit on systemd's bus. Workers so outlive a daemon
// that is SIGKILLed, and a new daemon adopts the units whose definition hash still matches.
//
// Every unit is followed through one ordered stream, shared by all units: a `watchNameOwner` on
// org.freedesktop.systemd1 with two rules, every unit's PropertiesChanged (path_namespace) and
// every JobRemoved, handed to the unit's entry by object path or unit name (see
// SystemdUnitTable). The match rules are so a constant three, whatever the number of workers.
// One stream keeps systemd's order (a unit's properties are flushed before its job's
// JobRemoved), which two separate subscriptions would not; following the owner also tells a
// systemd that re-executed (daemon-reexec) so the state is read anew. The stream is in place
// before the call that creates a job, and before the read of an adopted unit's state, so
// nothing that happens in between is lost.

import BgWorkerCore
import DBus
import Glibc
import Logging

public final class SystemdRunner: WorkerRunner {
    public let kind = "systemd"
    public let loop: EventLoop
    /// Exits, handed to the loop as jobs (the bus's own thread and tasks find them, see
    /// SystemdUnitTable).
    private let eventSink: RunnerEventSink
    /// Starts and stops, carried out one at a time in the order asked for by one task: a stop
    /// never overtakes the start before it, though each takes several bus round trips.
    private let commands: AsyncStream<Command>.Continuation
    private let table: SystemdUnitTable
    private let logger: Logger
    /// The connection is the runner's own: `shutdown` closes it.
    private let ownsConnection: Bool
    /// Where workers without a `working-directory` run: the daemon's directory when it started.
    private let daemonDirectory: String?

    /// A runner on `connection`, a connection to the bus where the systemd that is PID 1 answers
    /// (the system bus), which the caller owns. If that connection ends, the runner cannot follow
    /// the units any more (it logs it); `init(connect:)` makes a runner that reconnects. Nothing
    /// is sent until the first `start` or `adopt` (which subscribe to systemd's signals).
    public convenience init(
        connection: DBusConnection, loop: EventLoop? = nil, logger: Logger = Logger(label: "bgworkerd.systemd-runner")
    ) {
        self.init(connection: connection, reconnect: nil, loop: loop, logger: logger)
    }

    /// A runner on a connection of its own, made with `connect` (e.g. to `.system`); when the
    /// connection ends, it makes a new one (after 0.1 s, doubling up to 5 s between attempts),
    /// follows every unit again and reads its state anew (an end meanwhile is reported).
    /// `shutdown` closes the connection.
    public convenience init(
        connect: @escaping @Sendable () async throws -> DBusConnection, loop: EventLoop? = nil,
        logger: Logger = Logger(label: "bgworkerd.systemd-runner")
    ) async throws {
        self.init(connection: try await connect(), reconnect: connect, loop: loop, logger: logger)
    }

    init(
        connection: DBusConnection, reconnect: (@Sendable () async throws -> DBusConnection)?, loop: EventLoop?,
        logger: Logger
    ) {
        let loop = loop ?? .shared
        self.loop = loop
        let events = RunnerEventSink(loop: loop)
        eventSink = events
        ownsConnection = reconnect != nil
        self.logger = logger
        table = SystemdUnitTable(connection: connection, reconnect: reconnect, events: events, logger: logger)
        daemonDirectory = currentDirectory()
        let (queue, commands) = AsyncStream.makeStream(of: Command.self)
        self.commands = commands
        // Ends when `shutdown` finishes the queue; until then the task keeps the runner alive.
        Task.detached { [self] in
            for await command in queue {
                switch command {
                case let .start(spec, answer):
                    do throws(RunnerError) {
                        answer(.success(try await carryOutStart(spec)))
                    } catch {
                        answer(.failure(error))
                    }
                case let .stop(name, done):
                    await carryOutStop(name: name)
                    done()
                }
            }
        }
    }

    private enum Command {
        case start(LaunchSpec, @Sendable (Result<Int32, RunnerError>) -> Void)
        case stop(String, @Sendable () -> Void)
    }

    public func setEventHandler(_ handler: @escaping @Sendable (RunnerEvent) -> Void, ended: @escaping @Sendable () -> Void) {
        eventSink.setHandler(handler, ended: ended)
    }

    public func submitStart(_ spec: LaunchSpec, answer reply: @escaping @Sendable (Result<Int32, RunnerError>) -> Void) {
        // The answer reaches the loop as a job, like the exits (see `WorkerRunner`).
        let answer: @Sendable (Result<Int32, RunnerError>) -> Void = { [loop] result in loop.execute { reply(result) } }
        if case .terminated = commands.yield(.start(spec, answer)) {
            answer(.failure(RunnerError(.shutDown, worker: spec.name, context: "the runner is shut down")))
        }
    }

    public func submitStop(name: String, done reply: @escaping @Sendable () -> Void) {
        let done: @Sendable () -> Void = { [loop] in loop.execute(reply) }
        if case .terminated = commands.yield(.stop(name, done)) { done() }
    }

    private func carryOutStart(_ spec: LaunchSpec) async throws(RunnerError) -> Int32 {
        guard isValidWorkerName(spec.name) else {
            throw RunnerError(.invalidSpec, worker: spec.name, context: "not a valid worker name")
        }
        guard let program = spec.argv.first, program.hasPrefix("/") else {
            throw RunnerError(.invalidSpec, worker: spec.name, context: "argv[0] must be an absolute path")
        }
        let unit = WorkerUnit(worker: spec.name)
        let id = try await table.reserve(unit, reportsExit: true, notify: spec.ready == .notify)
        do {
            try await table.follow(id: id)
            let connection = try await table.currentConnection(for: spec.name)
            switch try await createUnit(unit, spec: spec, on: connection) {
            case .job(let job):
                logger.debug("start job queued", metadata: ["worker": "\(spec.name)", "unit": "\(unit.name)", "job": "\(job)"])
                return try await table.waitForStart(id: id, job: job).get()
            case .running(let state):
                return try await takeOver(id: id, unit: unit, spec: spec, state: state, on: connection)
            }
        } catch {
            await table.discard(id: id)
            throw error
        }
    }

    private func carryOutStop(name: String) async {
        guard let unit = await table.requestStop(name: name),
              let connection = try? await table.currentConnection(for: name)
        else { return }  // not created yet, or no bus now: stopped once it started / the bus is back
        await stopUnit(unit, on: connection, logger: logger)
    }

    public func adopt(_ specs: [LaunchSpec]) async -> [String: Int32] {
        let listed: [String]
        do {
            try await table.ensureSubscribed()
            listed = try await listWorkerUnits(on: try await table.currentConnection())
        } catch {
            logger.error("cannot list the worker units: \(error)")
            return [:]
        }
        let specs = Dictionary(specs.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        var adopted: [String: Int32] = [:]
        var leaving: [(WorkerUnit, UInt64)] = []
        var workers: [String] = []
        for unitName in listed {
            guard let worker = workerName(fromSystemdUnitName: unitName) else {
                logger.notice("leaving alone a unit bgworkerd does not name", metadata: ["unit": "\(unitName)"])
                continue
            }
            workers.append(worker)
        }
        // Units are read side by side (each read is two round trips to systemd), a bounded number
        // at a time so the bus's queue for us stays small.
        await withTaskGroup(of: (String, AdoptionResult).self) { group in
            var next = workers.makeIterator()
            func addNext() -> Bool {
                guard let worker = next.next() else { return false }
                group.addTask { [self] in (worker, await adoptOrRemove(WorkerUnit(worker: worker), spec: specs[worker])) }
                return true
            }
            for _ in 0..<SystemdUnitTable.concurrentCalls { if !addNext() { break } }
            while let (worker, result) = await group.next() {
                switch result {
                case .adopted(let pid): adopted[worker] = pid
                case .leaving(let id): leaving.append((WorkerUnit(worker: worker), id))
                case .nothing: break
                }
                _ = addNext()
            }
        }
        await table.deferStops(leaving)
        return adopted
    }

    public func finishAdoption() async {
        let leaving = await table.takeDeferredStops()
        guard !leaving.isEmpty, let connection = try? await table.currentConnection() else { return }
        // The supervisor starts changed workers right after: their old units must be gone first.
        await forEach(leaving, atMost: SystemdUnitTable.concurrentCalls) { [table, logger] unit, id in
            await stopUnit(unit, on: connection, logger: logger)
            await table.waitUntilGone(id: id)
        }
    }

    public func release() async {
        await table.releaseAll()
        commands.finish()
        guard let connection = await table.finish() else { return }
        await closeOrUnsubscribe(connection)
    }

    public func shutdown() async {
        let units = await table.beginShutdown()
        if let connection = try? await table.currentConnection() {
            // A bounded number at a time: 300 StopUnit calls at once exceeded dbus-daemon's 128
            // pending replies per connection (LimitsExceeded).
            await forEach(units, atMost: SystemdUnitTable.concurrentCalls) { [logger] unit in
                await stopUnit(unit, on: connection, logger: logger)
            }
        }
        // Without a connection now, the units are stopped once it is back (they are marked).
        await table.waitUntilEmpty()
        commands.finish()
        guard let connection = await table.finish() else { return }
        await closeOrUnsubscribe(connection)
    }

    private func closeOrUnsubscribe(_ connection: DBusConnection) async {
        if ownsConnection {
            connection.close()
        } else {
            _ = try? await connection.call(destination: SystemdBus.name, path: SystemdBus.managerPath,
                                           interface: SystemdBus.manager, member: "Unsubscribe")
        }
    }

    // MARK: Steps

    private enum Creation {
        case job(String)
        /// The unit exists and is in this (not final) state.
        case running(String)
    }

    /// StartTransientUnit; returns the start job's path. A unit of that name left over in a
    /// final state (failed, or inactive but still loaded) is reset and the call made once more;
    /// one that still runs is reported as such.
    private func createUnit(_ unit: WorkerUnit, spec: LaunchSpec, on connection: DBusConnection) async throws(RunnerError) -> Creation {
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
                return .job(job.rawValue)
            } catch let error as DBusError where error.name == SystemdBus.unitExists && !retried {
                retried = true
                let state = (try? await SystemdBus.readProperty(on: connection, path: unit.path, interface: SystemdBus.unit,
                                                                 name: "ActiveState"))?.stringValue ?? ""
                guard state == "failed" || state == "inactive" else { return .running(state) }
                logger.notice("resetting a leftover unit", metadata: ["unit": "\(unit.name)", "state": "\(state)"])
                await resetFailed(unit, on: connection)
            } catch let error as RunnerError {
                throw error
            } catch let error as DBusError {
                throw RunnerError(.spawnFailed, worker: unit.worker, context: "StartTransientUnit \(unit.name): \(error)")
            } catch {
                throw RunnerError(.unavailable, worker: unit.worker, context: "StartTransientUnit \(unit.name): \(error)")
            }
        }
    }

    /// The unit a start wanted to create runs already (a start whose answer was lost with the
    /// bus connection, or a unit someone started by hand): with this very definition it is taken
    /// over as it runs; otherwise it is stopped and the start fails (the supervisor's next start,
    /// after its back-off, finds the name free).
    private func takeOver(id: UInt64, unit: WorkerUnit, spec: LaunchSpec, state: String,
                          on connection: DBusConnection) async throws(RunnerError) -> Int32 {
        guard await table.readState(id: id) else {
            throw RunnerError(.alreadyRunning, worker: unit.worker, context: "\(unit.name) exists (\(state)) and cannot be read")
        }
        switch await table.decideAdoption(id: id, definitionHash: spec.definitionHash) {
        case .adopted(let pid):
            logger.notice("took over the worker's unit, which was running already",
                          metadata: ["worker": "\(unit.worker)", "unit": "\(unit.name)", "pid": "\(pid)"])
            return pid
        case .ended(let state):
            throw RunnerError(.alreadyRunning, worker: unit.worker, context: "\(unit.name) existed (\(state)); try again")
        case .leave(let state, let why):
            logger.notice("stopping a unit of the worker that runs already: \(why)",
                          metadata: ["worker": "\(unit.worker)", "unit": "\(unit.name)", "state": "\(state)"])
            await stopUnit(unit, on: connection, logger: logger)
            throw RunnerError(.alreadyRunning, worker: unit.worker,
                              context: "\(unit.name) was running (\(state)) but \(why); it is being stopped")
        }
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
        let connection: DBusConnection
        do {
            try await table.follow(id: id)
            connection = try await table.currentConnection()
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
            if state == "failed" { await resetFailed(unit, on: connection) }
            return .nothing
        case .leave(let state, let why):
            // Stopped by `finishAdoption`, once the daemon owns its name (not before: a daemon
            // that finds another one running must leave that one's units alone).
            logger.notice("will stop a worker unit left by a previous daemon: \(why)",
                          metadata: ["worker": "\(unit.worker)", "unit": "\(unit.name)", "state": "\(state)"])
            return .leaving(id)
        }
    }

    private func resetFailed(_ unit: WorkerUnit, on connection: DBusConnection) async {
        _ = try? await connection.call(destination: SystemdBus.name, path: SystemdBus.managerPath,
                                       interface: SystemdBus.manager, member: "ResetFailedUnit",
                                       arguments: [.string(unit.name)])
    }
}

/// Loaded units named `bgworker-*.service`.
private func listWorkerUnits(on connection: DBusConnection) async throws -> [String] {
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
        guard let name = row.structureValue?.first?.stringValue,
              name.hasPrefix(systemdUnitPrefix), name.hasSuffix(systemdUnitSuffix)
        else { return nil }
        return name
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
