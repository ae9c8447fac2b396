// The systemd runner's one owner of state: the units it follows, the starts waiting for their
// job, the waiters for units to end, and the events stream. Signals come in through `handle`,
// one task per unit feeding its ordered stream.

import BgWorkerCore
import DBus
import Logging

actor SystemdUnitTable {
    private struct Entry {
        let unit: WorkerUnit
        var tracker = UnitTracker()
        var watch: NameOwnerWatch?
        /// The caller of `start`, waiting for the start job's end.
        var starter: CheckedContinuation<Result<Int32, RunnerError>, Never>?
        /// False for units found at adoption that are being stopped: the supervisor does not
        /// know them, so their end is not an event.
        var reportsExit: Bool
        /// A stop was asked for; if the unit only starts later, it is stopped then.
        var stopRequested = false
        var goneWaiters: [CheckedContinuation<Void, Never>] = []
    }

    private let connection: DBusConnection
    private let eventSink: AsyncStream<RunnerEvent>.Continuation
    private let logger: Logger
    private var entries: [UInt64: Entry] = [:]
    private var idsByWorker: [String: UInt64] = [:]
    private var nextID: UInt64 = 1
    private var shuttingDown = false
    private var emptyWaiters: [CheckedContinuation<Void, Never>] = []
    /// Reads of units' properties sent with `callOwner`, by call id: their replies come through
    /// the unit's stream, in order among its signals.
    private var pendingReads: [UInt64: (entry: UInt64, waiter: CheckedContinuation<Bool, Never>?)] = [:]
    private var subscribed = false
    private var subscribing: Task<Void, any Error>?

    init(connection: DBusConnection, events: AsyncStream<RunnerEvent>.Continuation, logger: Logger) {
        self.connection = connection
        eventSink = events
        self.logger = logger
    }

    // MARK: Subscription

    /// Calls systemd's `Subscribe()` once (systemd sends JobRemoved and PropertiesChanged only
    /// while a client is subscribed). Concurrent callers share the one call.
    func ensureSubscribed() async throws {
        if subscribed { return }
        if let subscribing { return try await subscribing.value }
        let task = Task { [connection] in try await subscribeToSystemd(connection) }
        subscribing = task
        defer { subscribing = nil }
        try await task.value
        subscribed = true
    }

    /// After systemd got a new bus connection: subscribe again (a restarted systemd forgot us;
    /// a re-executed one answers AlreadySubscribed, which is fine).
    func resubscribe() async {
        do {
            try await subscribeToSystemd(connection)
        } catch {
            logger.error("cannot subscribe to systemd's signals again: \(error)")
        }
    }

    // MARK: Entries

    /// A new entry for `unit`; refused when the runner is shut down or follows that worker already.
    func reserve(_ unit: WorkerUnit, reportsExit: Bool) throws(RunnerError) -> UInt64 {
        guard !shuttingDown else {
            throw RunnerError(.shutDown, worker: unit.worker, context: "the runner is shut down")
        }
        guard idsByWorker[unit.worker] == nil else {
            throw RunnerError(.alreadyRunning, worker: unit.worker, context: "\(unit.name) runs already")
        }
        let id = nextID
        nextID += 1
        entries[id] = Entry(unit: unit, reportsExit: reportsExit)
        idsByWorker[unit.worker] = id
        return id
    }

    /// Keeps the entry's signal stream; false when the entry is gone or the runner shuts down
    /// (then no unit may be created for it).
    func attach(_ watch: NameOwnerWatch, id: UInt64) -> Bool {
        guard entries[id] != nil, !shuttingDown else { return false }
        entries[id]?.watch = watch
        return true
    }

    /// StartTransientUnit answered with `job`: waits until the job ended and returns the pid.
    func waitForStart(id: UInt64, job: String) async -> Result<Int32, RunnerError> {
        await withCheckedContinuation { continuation in
            guard entries[id] != nil else {
                continuation.resume(returning: .failure(RunnerError(.unavailable, worker: nil, context: "lost track of the unit before its start job ended")))
                return
            }
            entries[id]?.starter = continuation
            update(id) { $0.startJobCreated(job) }
        }
    }

    /// Forgets an entry (its start failed before a job existed, or it needs no more following).
    func discard(id: UInt64) {
        guard var entry = entries[id] else { return }
        entry.tracker.abandon()
        entries[id] = entry
        remove(id, startFailure: RunnerError(.unavailable, worker: entry.unit.worker, context: "the start was abandoned"))
    }

    /// Marks a worker to stop; returns its unit when systemd may have it now (nil when the
    /// worker is not followed, or its unit is not created yet: then it is stopped once started).
    func requestStop(name: String) -> WorkerUnit? {
        guard let id = idsByWorker[name], var entry = entries[id] else { return nil }
        entry.stopRequested = true
        entries[id] = entry
        if entry.tracker.phase == .starting && entry.tracker.startJob == nil { return nil }
        return entry.unit
    }

    enum AdoptionDecision: Sendable, Equatable {
        /// Followed as started, with this pid.
        case adopted(Int32)
        /// To be stopped (`why`); its end is no event. `state` is its ActiveState.
        case leave(state: String, why: String)
        /// It has ended already; nothing to do.
        case ended(state: String)
    }

    /// Decides, on the unit's state as read (`readState`) and announced since, whether the unit
    /// found at adoption is adopted (its worker exists, `active` with a main pid, same definition
    /// hash) or stopped; in one step, so no signal comes between the decision and its effect.
    func decideAdoption(id: UInt64, definitionHash: UInt64?) -> AdoptionDecision {
        guard let entry = entries[id] else { return .ended(state: "gone") }
        let status = entry.tracker.status
        let hash = WorkerUnit.definitionHash(inEnvironment: status.environment)
        let state = status.activeState
        if let definitionHash, state == "active", status.mainPID != 0, let pid = Int32(exactly: status.mainPID),
           hash == definitionHash {
            update(id) { $0.adopted(pid: pid) }
            return .adopted(pid)
        }
        let why: String
        switch definitionHash {
        case nil: why = "no such worker is configured"
        case hash: why = "its unit is \(state.isEmpty ? "in an unknown state" : state)"
        default: why = "its definition changed"
        }
        entries[id]?.reportsExit = false
        update(id) { $0.leaving() }
        return entries[id] == nil ? .ended(state: state) : .leave(state: state, why: why)
    }

    func waitUntilGone(id: UInt64) async {
        guard entries[id] != nil else { return }
        await withCheckedContinuation { entries[id]?.goneWaiters.append($0) }
    }

    // MARK: Signals

    /// A signal of the entry's stream: the unit's PropertiesChanged or its JobRemoved.
    func handle(_ signal: DBusSignal, id: UInt64) {
        guard entries[id] != nil else { return }
        let args = signal.arguments
        switch signal.member {
        case "PropertiesChanged":
            // (s interface, a{sv} changed, as invalidated)
            guard args.count == 3, let changed = args[1].stringKeyedDictionary else { return }
            update(id) { $0.propertiesChanged(changed) }
        case "JobRemoved":
            // (u id, o job, s unit, s result)
            guard args.count == 4, let job = args[1].objectPathValue, let result = args[3].stringValue else { return }
            update(id) { $0.jobRemoved(job: job.rawValue, result: result) }
        default:
            break
        }
    }

    /// Reads the unit's Unit and Service properties through its stream and waits for both
    /// replies; they are applied at their place among the unit's signals. False when a read failed.
    func readState(id: UInt64) async -> Bool {
        var complete = true
        for interface in [SystemdBus.unit, SystemdBus.service] {
            let read = await withCheckedContinuation { sendRead(id: id, interface: interface, waiter: $0) }
            complete = complete && read
        }
        return complete
    }

    /// Reads the unit's properties anew without waiting (from the unit's own stream task, which
    /// must go on to deliver the replies): after systemd re-executed.
    func refresh(id: UInt64) {
        for interface in [SystemdBus.unit, SystemdBus.service] { sendRead(id: id, interface: interface, waiter: nil) }
    }

    /// The reply to a read sent with `callOwner`.
    func handleReply(_ reply: OwnerCallReply, id: UInt64) {
        guard let pending = pendingReads.removeValue(forKey: reply.id) else { return }
        switch reply.result {
        case .success(let values):
            if let all = values.first?.stringKeyedDictionary { update(id) { $0.propertiesRead(all) } }
            pending.waiter?.resume(returning: true)
        case .failure(let error):
            if let unit = entries[id]?.unit {
                logger.warning("cannot read a unit's properties", metadata: ["unit": "\(unit.name)", "error": "\(error)"])
            }
            pending.waiter?.resume(returning: false)
        }
    }

    private func sendRead(id: UInt64, interface: String, waiter: CheckedContinuation<Bool, Never>?) {
        guard let entry = entries[id], let watch = entry.watch else {
            waiter?.resume(returning: false)
            return
        }
        do {
            let call = try watch.callOwner(path: entry.unit.path, interface: SystemdBus.properties, member: "GetAll",
                                           arguments: [.string(interface)])
            pendingReads[call] = (id, waiter)
        } catch {
            waiter?.resume(returning: false)
        }
    }

    /// The entry's stream ended without the runner cancelling it: the bus connection is gone.
    /// Nothing more can be learned about the unit; its worker keeps running under systemd.
    func streamEnded(id: UInt64) {
        guard let entry = entries[id] else { return }
        logger.error("lost the bus connection to systemd; no longer following the unit",
                     metadata: ["unit": "\(entry.unit.name)"])
        entries[id]?.tracker.abandon()
        remove(id, startFailure: RunnerError(.unavailable, worker: entry.unit.worker, context: "the bus connection to systemd ended"))
    }

    // MARK: Shutdown

    /// Refuses new starts and marks every unit to stop; returns the units to stop now.
    func beginShutdown() -> [(String, WorkerUnit)] {
        shuttingDown = true
        var units: [(String, WorkerUnit)] = []
        for id in entries.keys.sorted() {
            entries[id]?.stopRequested = true
            if let entry = entries[id] { units.append((entry.unit.worker, entry.unit)) }
        }
        return units
    }

    func waitUntilEmpty() async {
        if entries.isEmpty { return }
        await withCheckedContinuation { emptyWaiters.append($0) }
    }

    func finishEvents() { eventSink.finish() }

    // MARK: Outcomes

    private func update(_ id: UInt64, _ change: (inout UnitTracker) -> [UnitTracker.Outcome]) {
        guard var entry = entries[id] else { return }
        let outcomes = change(&entry.tracker)
        entries[id] = entry
        for outcome in outcomes { carryOut(outcome, id: id) }
    }

    private func carryOut(_ outcome: UnitTracker.Outcome, id: UInt64) {
        guard let entry = entries[id] else { return }
        let unit = entry.unit
        switch outcome {
        case .started(let pid):
            logger.debug("worker unit started", metadata: ["unit": "\(unit.name)", "pid": "\(pid)"])
            entries[id]?.starter?.resume(returning: .success(pid))
            entries[id]?.starter = nil
            if entry.stopRequested {
                Task { [connection, logger] in await stopUnit(unit, on: connection, logger: logger) }
            }
        case .startFailed(let why):
            remove(id, startFailure: RunnerError(.spawnFailed, worker: unit.worker, context: "systemd: \(unit.name): \(why)"))
        case .exited(let pid, let status):
            if entry.reportsExit {
                eventSink.yield(.exited(name: unit.worker, pid: pid, status: status))
            }
            remove(id, startFailure: nil)
        case .needsProperties:
            sendRead(id: id, interface: SystemdBus.service, waiter: nil)
        }
    }

    /// Drops an entry: its stream is cancelled and everyone waiting for it resumes.
    private func remove(_ id: UInt64, startFailure: RunnerError?) {
        guard let entry = entries.removeValue(forKey: id) else { return }
        if idsByWorker[entry.unit.worker] == id { idsByWorker[entry.unit.worker] = nil }
        entry.watch?.cancel()
        if let starter = entry.starter {
            starter.resume(returning: .failure(startFailure ?? RunnerError(.unavailable, worker: entry.unit.worker, context: "the unit ended before its start job")))
        }
        for waiter in entry.goneWaiters { waiter.resume() }
        for (call, pending) in pendingReads where pending.entry == id {
            pendingReads[call] = nil
            pending.waiter?.resume(returning: false)
        }
        if entries.isEmpty {
            for waiter in emptyWaiters { waiter.resume() }
            emptyWaiters = []
        }
    }
}

/// `Subscribe()`; being subscribed already (the same connection subscribed before) is fine.
private func subscribeToSystemd(_ connection: DBusConnection) async throws {
    do {
        _ = try await connection.call(destination: SystemdBus.name, path: SystemdBus.managerPath,
                                      interface: SystemdBus.manager, member: "Subscribe")
    } catch let error as DBusError where error.name == SystemdBus.alreadySubscribed {
    }
}
