// The systemd runner's one owner of state: the units it follows, the one ordered signal stream
// that follows them all (and the task that feeds it here), the starts waiting for their job, the
// waiters for units to end, the bus connection (and getting a new one when it ends), and the
// events (to the loop).
//
// The stream holds a constant number of match rules, whatever the number of units: every unit's
// PropertiesChanged (path_namespace on systemd's unit objects), every JobRemoved, and the
// NameOwnerChanged of org.freedesktop.systemd1. Signals are handed to the unit's entry by object
// path or unit name. A rule per unit hit dbus-daemon's limit of 512 rules per connection at about
// 250 workers (issue 16).

import BgWorkerCore
import DBus
import Logging

actor SystemdUnitTable {
    private struct Entry {
        let unit: WorkerUnit
        var tracker: UnitTracker
        /// The caller of `start`, waiting for the start job's end.
        var starter: CheckedContinuation<Result<Int32, RunnerError>, Never>?
        /// False for units found at adoption that are being stopped: the supervisor does not
        /// know them, so their end is not an event.
        var reportsExit: Bool
        /// A stop was asked for; if the unit only starts later (or the bus comes back), it is
        /// stopped then.
        var stopRequested = false
        var goneWaiters: [CheckedContinuation<Void, Never>] = []
    }

    /// nil while there is none (the bus connection ended and a new one is being made).
    private var connection: DBusConnection?
    /// Makes a new connection to systemd's bus; nil when the runner was given a connection it
    /// does not own (then an ended connection cannot be replaced).
    private let reconnect: (@Sendable () async throws -> DBusConnection)?
    private var watchedConnection: ObjectIdentifier?
    private var reconnecting: Task<Void, Never>?
    private let eventSink: RunnerEventSink
    private let logger: Logger
    private var entries: [UInt64: Entry] = [:]
    private var idsByWorker: [String: UInt64] = [:]
    /// The same entries by the unit's object path (PropertiesChanged) and by unit name (JobRemoved).
    private var idsByPath: [String: UInt64] = [:]
    private var idsByUnit: [String: UInt64] = [:]
    /// The stream of every unit's signals on the current connection; nil until first needed and
    /// while there is no connection.
    private var stream: NameOwnerWatch?
    private var streamOpening: Task<NameOwnerWatch, any Error>?
    /// Counts the streams; the end of a stream that was replaced or cancelled is ignored.
    private var streamGeneration: UInt64 = 0
    private var nextID: UInt64 = 1
    private var shuttingDown = false
    private var emptyWaiters: [CheckedContinuation<Void, Never>] = []
    /// Reads of units' properties sent with `callOwner`, by call id: their replies come through
    /// the unit's stream, in order among its signals.
    private var pendingReads: [UInt64: (entry: UInt64, waiter: CheckedContinuation<Bool, Never>?)] = [:]
    private var subscribed = false
    /// Units `adopt` found and will not take over, stopped by `finishAdoption`.
    private var deferredStops: [(WorkerUnit, UInt64)] = []
    private var subscribing: Task<Void, any Error>?

    init(connection: DBusConnection, reconnect: (@Sendable () async throws -> DBusConnection)?,
         events: RunnerEventSink, logger: Logger) {
        self.connection = connection
        self.reconnect = reconnect
        eventSink = events
        self.logger = logger
    }

    // MARK: The connection

    /// The connection to systemd's bus; throws while there is none.
    func currentConnection(for worker: String? = nil) throws(RunnerError) -> DBusConnection {
        guard let connection else {
            throw RunnerError(.unavailable, worker: worker, context: "no connection to systemd's bus (reconnecting)")
        }
        if watchedConnection != ObjectIdentifier(connection) {
            watchedConnection = ObjectIdentifier(connection)
            Task { [weak self] in
                for await event in connection.events {
                    if case .disconnected = event { await self?.connectionEnded(connection) }
                }
            }
        }
        return connection
    }

    /// Calls systemd's `Subscribe()` once per connection (systemd sends JobRemoved and
    /// PropertiesChanged only while a client is subscribed). Concurrent callers share the call.
    func ensureSubscribed() async throws {
        let connection = try currentConnection()
        if subscribed { return }
        if let subscribing { return try await subscribing.value }
        let task = Task { try await subscribeToSystemd(connection) }
        subscribing = task
        defer { subscribing = nil }
        try await task.value
        if self.connection === connection { subscribed = true }
    }

    /// After systemd got a new bus connection: subscribe again (a restarted systemd forgot us;
    /// a re-executed one answers AlreadySubscribed, which is fine).
    func resubscribe() async {
        guard let connection else { return }
        do {
            try await subscribeToSystemd(connection)
        } catch {
            logger.error("cannot subscribe to systemd's signals again: \(error)")
        }
    }

    /// The connection ended: every stream with it. Starts in flight fail; units that run are
    /// followed again on a new connection, their state read anew (an end meanwhile is reported).
    private func connectionEnded(_ ended: DBusConnection) {
        guard let current = connection, current === ended else { return }
        connection = nil
        subscribed = false
        stream?.cancel()
        stream = nil
        streamGeneration += 1
        for id in entries.keys.sorted() {
            guard let entry = entries[id] else { continue }
            if entry.tracker.phase == .starting {
                remove(id, startFailure: RunnerError(.unavailable, worker: entry.unit.worker, context: "the bus connection to systemd ended"))
            }
        }
        for (call, pending) in pendingReads {
            pendingReads[call] = nil
            pending.waiter?.resume(returning: false)
        }
        guard let reconnect, !shuttingDown || !entries.isEmpty else {
            if !entries.isEmpty {
                logger.error("lost the bus connection to systemd; no longer following the workers' units",
                             metadata: ["units": "\(entries.values.map(\.unit.name).sorted())"])
            }
            for id in entries.keys.sorted() { entries[id]?.tracker.abandon(); remove(id, startFailure: nil) }
            return
        }
        logger.error("lost the bus connection to systemd; connecting again")
        reconnecting = Task { [weak self] in
            // A due timer between attempts, doubling up to 5 s.
            var delay = Duration.milliseconds(100)
            while !Task.isCancelled {
                if let new = try? await reconnect() {
                    await self?.connected(new)
                    return
                }
                try? await EventLoop.shared.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            }
        }
    }

    /// A new connection: follow every unit again and read its state.
    private func connected(_ new: DBusConnection) async {
        reconnecting = nil
        connection = new
        logger.notice("connected to systemd's bus again; reading the workers' units anew")
        // systemd may not be back on the bus yet: then each unit's stream reports its owner when
        // it comes, which subscribes again and reads the unit (`ownerChanged` in `follow`).
        try? await ensureSubscribed()
        let watch: NameOwnerWatch
        do {
            watch = try await openStream(for: nil, subscribe: false)
        } catch {
            logger.error("cannot follow the units again: \(error)")
            return  // the connection ended again: the next connection picks them up
        }
        guard watch.initialOwner != nil else { return }
        for id in entries.keys.sorted() { await resynchronize(id: id) }
    }

    /// Reads a unit that may have changed while nothing was heard of it; stops it if that was asked.
    private func resynchronize(id: UInt64) async {
        if await !readState(id: id) {
            // The unit cannot be read: report its end; a start then finds (and takes over) the
            // unit if it still runs.
            update(id) { $0.lost() }
        }
        stopIfAsked(id: id)
    }

    // MARK: Entries

    /// A new entry for `unit`; refused when the runner is shut down or follows that worker already.
    func reserve(_ unit: WorkerUnit, reportsExit: Bool, notify: Bool = false) throws(RunnerError) -> UInt64 {
        guard !shuttingDown else {
            throw RunnerError(.shutDown, worker: unit.worker, context: "the runner is shut down")
        }
        guard idsByWorker[unit.worker] == nil else {
            throw RunnerError(.alreadyRunning, worker: unit.worker, context: "\(unit.name) runs already")
        }
        let id = nextID
        nextID += 1
        entries[id] = Entry(unit: unit, tracker: UnitTracker(notify: notify), reportsExit: reportsExit)
        idsByWorker[unit.worker] = id
        idsByPath[unit.path.rawValue] = id
        idsByUnit[unit.name] = id
        return id
    }

    /// Makes sure the stream that follows every unit is in place (so every signal of the entry's
    /// unit from now on reaches it). Returns whether systemd owns its name now.
    @discardableResult
    func follow(id: UInt64) async throws(RunnerError) -> Bool {
        guard let unit = entries[id]?.unit else {
            throw RunnerError(.unavailable, worker: nil, context: "the unit is no longer followed")
        }
        let watch = try await openStream(for: unit.worker)
        guard entries[id] != nil else {
            throw RunnerError(.unavailable, worker: unit.worker, context: "the unit is no longer followed")
        }
        guard !shuttingDown else {
            throw RunnerError(.shutDown, worker: unit.worker, context: "the runner is shut down")
        }
        return watch.currentOwner != nil
    }

    /// The match rules of the stream: a constant number, whatever the number of units.
    static let unitSignals = [
        MatchRule(pathNamespace: try? ObjectPath(String(SystemdBus.unitPathPrefix.dropLast())),
                  interface: SystemdBus.properties, member: "PropertiesChanged"),
        MatchRule(path: SystemdBus.managerPath, interface: SystemdBus.manager, member: "JobRemoved"),
    ]

    /// The stream of every unit's signals on the current connection, opened (after `Subscribe`,
    /// unless systemd may not be on the bus yet) on first use, with the task that feeds it here.
    /// Concurrent callers share the opening.
    private func openStream(for worker: String?, subscribe: Bool = true) async throws(RunnerError) -> NameOwnerWatch {
        let connection = try currentConnection(for: worker)
        if let stream { return stream }
        do {
            if subscribe { try await ensureSubscribed() }
            if let stream { return stream }
            if let streamOpening {
                _ = try await streamOpening.value
            } else {
                // The task installs the stream before it completes, so whoever awaits it finds it.
                let task = Task {
                    do {
                        let watch = try await connection.watchNameOwner(SystemdBus.name, signals: Self.unitSignals)
                        return try self.install(watch, on: connection)
                    } catch {
                        self.openingEnded()
                        throw error
                    }
                }
                streamOpening = task
                _ = try await task.value
            }
        } catch let error as RunnerError {
            throw error
        } catch {
            throw RunnerError(.unavailable, worker: worker, context: "following the units on systemd's bus: \(error)")
        }
        guard let stream else {
            throw RunnerError(.unavailable, worker: worker, context: "the connection to systemd's bus ended")
        }
        return stream
    }

    private func install(_ watch: NameOwnerWatch, on connection: DBusConnection) throws(RunnerError) -> NameOwnerWatch {
        streamOpening = nil
        guard self.connection === connection else {
            watch.cancel()
            throw RunnerError(.unavailable, worker: nil, context: "the connection to systemd's bus ended")
        }
        stream = watch
        streamGeneration += 1
        feed(watch, generation: streamGeneration, connection: connection)
        return watch
    }

    private func openingEnded() { streamOpening = nil }

    private func feed(_ watch: NameOwnerWatch, generation: UInt64, connection: DBusConnection) {
        Task { [weak self, logger] in
            for await event in watch {
                guard let self else { return }
                switch event {
                case .signal(let signal):
                    await self.handle(signal)
                case .ownerReply(let reply):
                    await self.handleReply(reply)
                case .ownerChanged(_, let owner?):
                    // systemd re-executed or restarted: signals may have been lost meanwhile.
                    logger.notice("systemd has a new bus connection; reading the units' state again",
                                  metadata: ["owner": "\(owner)"])
                    await self.resubscribe()
                    await self.refreshAll()
                case .ownerChanged(_, nil), .ignoredSignal:
                    break
                }
            }
            await self?.streamEnded(generation: generation, connection: connection)
        }
    }

    private func stopIfAsked(id: UInt64) {
        guard let entry = entries[id], entry.stopRequested, let connection else { return }
        Task { [logger] in await stopUnit(entry.unit, on: connection, logger: logger) }
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

    /// Forgets an entry (its start failed, or it needs no more following).
    func discard(id: UInt64) {
        guard let entry = entries[id] else { return }
        entries[id]?.tracker.abandon()
        remove(id, startFailure: RunnerError(.unavailable, worker: entry.unit.worker, context: "the start was abandoned"))
    }

    /// Marks a worker to stop; returns its unit when systemd may have it now (nil when the
    /// worker is not followed, or its unit is not created yet: then it is stopped once started).
    func requestStop(name: String) -> WorkerUnit? {
        guard let id = idsByWorker[name], let entry = entries[id] else { return nil }
        entries[id]?.stopRequested = true
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

    /// Decides, on the unit's state as read (`readState`) and announced since, whether a unit
    /// found running is taken over (its worker exists, `active` with a main pid, same definition
    /// hash) or stopped; in one step, so no signal comes between the decision and its effect.
    func decideAdoption(id: UInt64, definitionHash: UInt64?) -> AdoptionDecision {
        guard let entry = entries[id] else { return .ended(state: "gone") }
        let status = entry.tracker.status
        let hash = WorkerUnit.definitionHash(inEnvironment: status.environment)
        let state = status.activeState
        // `reloading` (RELOADING=1) is a running worker's state too: taken over, not restarted.
        if let definitionHash, state == "active" || state == "reloading", status.mainPID != 0, let pid = Int32(exactly: status.mainPID),
           hash == definitionHash {
            update(id) { $0.adopted(pid: pid) }
            return entries[id] == nil ? .ended(state: "inactive") : .adopted(pid)
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

    func deferStops(_ units: [(WorkerUnit, UInt64)]) { deferredStops += units }

    func takeDeferredStops() -> [(WorkerUnit, UInt64)] {
        defer { deferredStops = [] }
        return deferredStops
    }

    /// Forgets every unit without stopping it, and refuses new starts.
    func releaseAll() {
        shuttingDown = true
        deferredStops = []
        for id in entries.keys.sorted() {
            entries[id]?.tracker.abandon()
            remove(id, startFailure: RunnerError(.shutDown, worker: entries[id]?.unit.worker, context: "the runner is released"))
        }
    }

    func waitUntilGone(id: UInt64) async {
        guard entries[id] != nil else { return }
        await withCheckedContinuation { entries[id]?.goneWaiters.append($0) }
    }

    // MARK: Signals and reads

    /// A signal of the stream: a unit's PropertiesChanged or a JobRemoved; those of units the
    /// runner does not follow are dropped.
    private func handle(_ signal: DBusSignal) {
        let args = signal.arguments
        switch signal.member {
        case "PropertiesChanged":
            // (s interface, a{sv} changed, as invalidated)
            guard let id = idsByPath[signal.path.rawValue],
                  args.count == 3, let changed = args[1].stringKeyedDictionary else { return }
            update(id) { $0.propertiesChanged(changed) }
        case "JobRemoved":
            // (u id, o job, s unit, s result)
            guard args.count == 4, let unit = args[2].stringValue, let id = idsByUnit[unit],
                  let job = args[1].objectPathValue, let result = args[3].stringValue else { return }
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

    /// Reads every unit's properties anew, and stops those asked to stop: after systemd
    /// re-executed. In a task of its own (the stream's task must go on to deliver the replies),
    /// a bounded number of units at a time (dbus-daemon allows 128 pending calls per connection).
    private func refreshAll() {
        let ids = entries.keys.sorted()
        Task { [weak self] in
            guard let self else { return }
            await forEach(ids, atMost: SystemdUnitTable.concurrentCalls) { [self] id in await self.resynchronize(id: id) }
        }
    }

    /// How many calls the runner has pending at once when it reads or stops many units:
    /// well under dbus-daemon's `max_replies_per_connection` (128 on Debian's system bus).
    static let concurrentCalls = 32

    /// The reply to a read sent with `callOwner`.
    private func handleReply(_ reply: OwnerCallReply) {
        guard let pending = pendingReads.removeValue(forKey: reply.id) else { return }
        let id = pending.entry
        switch reply.result {
        case .success(let values):
            if let all = values.first?.stringKeyedDictionary { update(id) { $0.propertiesRead(all) } }
            pending.waiter?.resume(returning: true)
        case .failure(let error):
            if let unit = entries[id]?.unit {
                logger.warning("cannot read a unit's properties", metadata: ["unit": "\(unit.name)", "error": "\(error)"])
            }
            if pending.waiter == nil && [SystemdBus.noSuchUnit, DBusError.Name.unknownObject].contains(error.name) {
                update(id) { $0.lost() }  // a refresh found the unit gone
            }
            pending.waiter?.resume(returning: false)
        }
    }

    private func sendRead(id: UInt64, interface: String, waiter: CheckedContinuation<Bool, Never>?) {
        guard let entry = entries[id], let watch = stream else {
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

    /// The stream ended. Unless the runner replaced or cancelled it, the connection is gone.
    private func streamEnded(generation: UInt64, connection ended: DBusConnection) {
        guard generation == streamGeneration, stream != nil else { return }
        connectionEnded(ended)
    }

    // MARK: Shutdown

    /// Refuses new starts and marks every unit to stop; returns the units to stop now.
    func beginShutdown() -> [WorkerUnit] {
        shuttingDown = true
        var units: [WorkerUnit] = []
        for id in entries.keys.sorted() {
            entries[id]?.stopRequested = true
            if let entry = entries[id] { units.append(entry.unit) }
        }
        return units
    }

    func waitUntilEmpty() async {
        if entries.isEmpty { return }
        await withCheckedContinuation { emptyWaiters.append($0) }
    }

    /// Ends the events stream and any reconnection; returns the connection, if any.
    func finish() -> DBusConnection? {
        eventSink.finish()
        stream?.cancel()
        stream = nil
        streamGeneration += 1
        reconnecting?.cancel()
        reconnecting = nil
        return connection
    }

    // MARK: Outcomes

    private func update(_ id: UInt64, _ change: (inout UnitTracker) -> [UnitTracker.Outcome]) {
        guard var entry = entries[id] else { return }
        let outcomes = change(&entry.tracker)
        entries[id] = entry
        for outcome in outcomes { carryOut(outcome, id: id) }
        if entries[id]?.tracker.phase == .ended { remove(id, startFailure: nil) }
    }

    private func carryOut(_ outcome: UnitTracker.Outcome, id: UInt64) {
        guard let entry = entries[id] else { return }
        let unit = entry.unit
        switch outcome {
        case .started(let pid):
            logger.debug("worker unit started", metadata: ["unit": "\(unit.name)", "pid": "\(pid)"])
            entries[id]?.starter?.resume(returning: .success(pid))
            entries[id]?.starter = nil
            if entry.stopRequested, let connection {
                Task { [logger] in await stopUnit(unit, on: connection, logger: logger) }
            }
        case .startFailed(let why):
            remove(id, startFailure: RunnerError(.spawnFailed, worker: unit.worker, context: "systemd: \(unit.name): \(why)"))
        case .exited(let pid, let status):
            if entry.reportsExit {
                eventSink.post(.exited(name: unit.worker, pid: pid, status: status))
            }
            remove(id, startFailure: nil)
        case .needsProperties:
            sendRead(id: id, interface: SystemdBus.service, waiter: nil)
        case .ready(let pid):
            if entry.reportsExit { eventSink.post(.ready(name: unit.worker, pid: pid)) }
        case .reloading(let pid):
            if entry.reportsExit { eventSink.post(.reloading(name: unit.worker, pid: pid)) }
        case .stopping(let pid):
            if entry.reportsExit { eventSink.post(.stopping(name: unit.worker, pid: pid)) }
        case .status(let pid, let text):
            if entry.reportsExit { eventSink.post(.status(name: unit.worker, pid: pid, text: text)) }
        }
    }

    /// Drops an entry: its stream is cancelled and everyone waiting for it resumes.
    private func remove(_ id: UInt64, startFailure: RunnerError?) {
        guard let entry = entries.removeValue(forKey: id) else { return }
        if idsByWorker[entry.unit.worker] == id { idsByWorker[entry.unit.worker] = nil }
        if idsByPath[entry.unit.path.rawValue] == id { idsByPath[entry.unit.path.rawValue] = nil }
        if idsByUnit[entry.unit.name] == id { idsByUnit[entry.unit.name] = nil }
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

/// Runs `body` for each item, at most `limit` at a time.
func forEach<T: Sendable>(_ items: [T], atMost limit: Int, _ body: @escaping @Sendable (T) async -> Void) async {
    await withTaskGroup(of: Void.self) { group in
        var iterator = items.makeIterator()
        for _ in 0..<limit {
            guard let item = iterator.next() else { break }
            group.addTask { await body(item) }
        }
        while await group.next() != nil {
            if let item = iterator.next() { group.addTask { await body(item) } }
        }
    }
}
