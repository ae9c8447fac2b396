// The worker state machine, restart policy and HA run rule for the whole fleet of workers.
//
// The daemon feeds `FleetEvent`s (with the monotonic time they happen at) and carries out the
// returned `FleetAction`s in order. See docs/core.md for the model and its rules.

/// The contract's worker states.
public enum WorkerState: String, Sendable, CaseIterable {
    case disabled, standby, starting, running, stopping, backoff, failed
    /// Enabled, but stopped by hand (`Stop`) until `Start`, `Restart`, `Enable` or a daemon
    /// restart; never persisted.
    case stopped

    /// Settled states are where an `Enable`, `Disable`, `Restart`, `Start` or `Stop` call is done:
    /// the worker runs, or it has no process (`disabled`, `standby`, `backoff`, `failed`,
    /// `stopped`). Only `starting` and `stopping` are in between.
    public var isSettled: Bool {
        self != .starting && self != .stopping
    }
}

/// A worker property other than `State` that changed (`State` changes come as `stateChanged`).
public enum WorkerProperty: Sendable, Hashable {
    case enabled(Bool)
    /// nil: no process (the bus shows 0).
    case pid(Int32?)
    case restarts(UInt32)
    /// nil: no exit yet (the bus shows "").
    case lastExit(WorkerExit?)
    case runOn(RunOn)
    /// The worker's own level (nil: it follows the manager's).
    case logLevel(LogLevel?)
    /// Its own level, else the manager's.
    case effectiveLogLevel(LogLevel)
    /// The last `STATUS=` of its process ("" when none).
    case statusText(String)
}

/// A worker as the bus shows it.
public struct WorkerStatus: Sendable, Equatable {
    public var definition: WorkerDefinition
    public var state: WorkerState
    /// The reason of the last state change.
    public var reason: String
    /// The intent in force (bus choice or configuration).
    public var enabled: Bool
    public var pid: Int32?
    public var restarts: UInt32
    public var lastExit: WorkerExit?
    /// Its own level (configured, or set over the bus); nil: it follows the manager's.
    public var logLevel: LogLevel?
    public var effectiveLogLevel: LogLevel
    /// The last `STATUS=` its current (or last) process sent; "" when none.
    public var statusText: String = ""

    public var name: String { definition.name }
}

/// Who holds maintenance mode, as the workers it holds show it: the oldest inhibitor still held.
public struct MaintenanceHold: Sendable, Hashable {
    public var who: String
    public var why: String

    public init(who: String, why: String) {
        self.who = who
        self.why = why
    }

    /// `maintenance: WHO: WHY`, the reason of a worker that maintenance keeps in `standby`.
    public var reason: String { "maintenance: \(who): \(why)" }
}

/// Everything that happens to the fleet.
public enum FleetEvent: Sendable, Equatable {
    /// Bus `Enable`. Throws `noSuchWorker`.
    case enable(String)
    /// Bus `Disable`. Throws `noSuchWorker`.
    case disable(String)
    /// Bus `Restart`. Throws `noSuchWorker`, `disabled`.
    case restart(String)
    /// Bus `Stop` (the emergency stop, never persisted). Throws `noSuchWorker`.
    case stop(String)
    /// Bus `Start`. Throws `noSuchWorker`, `disabled`.
    case start(String)
    /// The manager's `LogLevel` set over the bus.
    case managerLogLevel(LogLevel)
    /// A worker's own `LogLevel` set over the bus (nil clears it). Throws `noSuchWorker`.
    case workerLogLevel(String, LogLevel?)
    /// The HA source's role (`standalone` when HA is not configured). Repeats are harmless.
    case roleChanged(HARole)
    /// Maintenance mode after any change of the inhibitors: the oldest inhibitor still held, or
    /// nil once the last one is gone. nil to a hold stops every worker without
    /// `run-during-maintenance`; a hold to nil starts again what the other rules allow; a new
    /// holder only changes the reason of workers that come to rest from then on. Repeats are harmless.
    case maintenance(MaintenanceHold?)
    /// A `spawn` action succeeded: the program was executed with this pid.
    case processStarted(String, pid: Int32)
    /// A `spawn` action failed; `reason` is the runner's text (e.g. "No such file or directory").
    /// `retry: false` (the daemon is out of file descriptors): the worker fails at once instead
    /// of backing off, since a retry cannot succeed until an operator acts.
    case startFailed(String, reason: String, retry: Bool = true)
    /// A started (or adopted) process is gone.
    case processExited(String, pid: Int32, status: WorkerExit)
    /// The process sent `READY=1` (the systemd runner: its unit became active).
    case processReady(String, pid: Int32)
    /// The process sent `RELOADING=1`.
    case processReloading(String, pid: Int32)
    /// The process sent `STOPPING=1`: it ends by itself (its exit still counts as unexpected).
    case processStopping(String, pid: Int32)
    /// The process sent `STATUS=text`.
    case processStatus(String, pid: Int32, text: String)
    /// A timer set by `scheduleTimer` is due.
    case timerFired(String)
    /// The timer set by `scheduleRoleTimer` is due (the bounded `keep` or the lease may be over).
    case roleTimerFired
    /// A new, valid configuration (the daemon applies its own `[daemon]` settings and runs the HA
    /// source). A changed `[ha] source` makes the role the new source's `initialRole` before any
    /// worker is started or stopped for the new configuration.
    case reload(Configuration)
    /// Stop every worker; nothing starts any more. The daemon exits once `hasProcesses` is false.
    case shutdown
}

/// What the daemon must do, in order.
public enum FleetAction: Sendable, Equatable {
    /// Start the worker's process; answer with `processStarted` or `startFailed`.
    case spawn(name: String, definition: WorkerDefinition)
    /// SIGTERM the worker's process (group/unit), SIGKILL after its stop timeout; its exit comes
    /// back as `processExited`.
    case stop(name: String, pid: Int32)
    /// Arm (or re-arm) the worker's single timer; deliver `timerFired` at or after `at`.
    case scheduleTimer(name: String, at: MonotonicInstant)
    case cancelTimer(name: String)
    /// Arm (or re-arm) the fleet's one role timer: deliver `roleTimerFired` at or after `at`
    /// (when the last known role stops being kept, `[ha] keep-for`, or the role's lease ends,
    /// `[ha] lease`).
    case scheduleRoleTimer(at: MonotonicInstant)
    case cancelRoleTimer
    /// Exactly one per state change: emit `WorkerStateChanged`, set `State`/`StateChangedAt`.
    case stateChanged(name: String, state: WorkerState, pid: Int32?, reason: String)
    /// Other properties of the worker changed to these values.
    case propertiesChanged(name: String, [WorkerProperty])
    /// A reload added this worker: export its object.
    case workerAdded(WorkerStatus)
    /// A removed worker's process is gone: unexport its object.
    case workerRemoved(name: String)
    /// Write `state.encoded()` to the state file.
    case persist(EnableState)
}

public enum FleetError: Error, Sendable, Equatable, CustomStringConvertible {
    /// `org.example.BgWorker.Error.NoSuchWorker`
    case noSuchWorker(String)
    /// `org.example.BgWorker.Error.Disabled`
    case disabled(String)

    public var description: String {
        switch self {
        case .noSuchWorker(let name): "no worker named '\(name)'"
        case .disabled(let name): "worker '\(name)' is disabled"
        }
    }
}

/// Every worker of the configuration, the HA role and the persisted choices: one value, owned by
/// the daemon's supervisor, changed only by `start` and `handle`.
public struct Fleet: Sendable {
    public private(set) var configuration: Configuration
    public private(set) var roleState: RoleState
    public private(set) var enableState: EnableState
    public private(set) var isShuttingDown = false
    /// The manager's `LogLevel`: `[daemon] log-level`, or what the bus set since.
    public private(set) var managerLogLevel: LogLevel
    /// The oldest inhibitor while maintenance mode is held (the daemon's `Maintenance` property is
    /// `maintenance != nil`; the daemon keeps the inhibitors themselves).
    public private(set) var maintenance: MaintenanceHold?
    /// Whether `start` ran (before it, every worker rests whatever the rules say).
    public private(set) var isStarted = false
    private var needsPersist = false
    private var records: [String: WorkerRecord] = [:]

    /// Every worker rests (`disabled` or `standby`) until `start`. `enableState` is the decoded
    /// state file; choices no longer in force are dropped (and persisted at `start`).
    public init(configuration: Configuration, enableState: EnableState, role: HARole) {
        self.configuration = configuration
        roleState = RoleState(
            reported: role, onLost: configuration.ha.onLost, keepFor: configuration.ha.keepFor,
            lease: configuration.ha.leaseInForce)
        self.enableState = enableState.pruned(for: configuration)
        needsPersist = self.enableState != enableState
        managerLogLevel = configuration.daemon.logLevel
        for definition in configuration.workers {
            let enabled = self.enableState.effectiveEnabled(for: definition)
            records[definition.name] = WorkerRecord(definition: definition, enabled: enabled, state: enabled ? .standby : .disabled)
        }
    }

    // MARK: Queries

    /// Workers sorted by name, including ones being removed whose process is still stopping.
    public var workers: [WorkerStatus] {
        records.keys.sorted().compactMap { status(of: $0) }
    }

    /// How many workers are in each state (those being removed included, as in `workers`).
    public var stateCounts: [WorkerState: Int] {
        var counts: [WorkerState: Int] = [:]
        for record in records.values { counts[record.state, default: 0] += 1 }
        return counts
    }

    public func status(of name: String) -> WorkerStatus? {
        record(named: name).map { $0.status(managerLogLevel: managerLogLevel) }
    }

    /// Names from the bus match by code points: the String-keyed dictionary would let U+212A
    /// KELVIN SIGN find worker "K" (canonical equivalence).
    private func record(named name: String) -> WorkerRecord? {
        guard let record = records[name], record.definition.name.utf8.elementsEqual(name.utf8) else { return nil }
        return record
    }

    /// Whether the worker is settled (see `WorkerState.isSettled`), or `starting` after RELOADING=1;
    /// true for a worker that is gone.
    public func isSettled(_ name: String) -> Bool {
        guard let record = records[name] else { return true }
        // `starting` after RELOADING=1 is the worker's own doing, with no timeout: nothing the
        // daemon asked for is under way, and READY=1 may never come.
        return record.state.isSettled || (record.state == .starting && record.reloading)
    }

    /// Whether any worker has a process (or a start in flight). After `shutdown`, the daemon
    /// exits when this is false.
    public var hasProcesses: Bool {
        records.values.contains { $0.process != .none }
    }

    /// Whether the worker should run now by the rules (intent, failed, run rule, maintenance,
    /// shutdown).
    public func shouldRun(_ name: String) -> Bool {
        records[name].map(shouldRun) ?? false
    }

    /// Whether maintenance mode keeps this worker from running now (held, and the worker has no
    /// `run-during-maintenance`), whatever the other rules say.
    public func isHeldByMaintenance(_ name: String) -> Bool {
        records[name].map(isHeldByMaintenance) ?? false
    }

    /// Whether no worker that maintenance holds has a process (or a start in flight), workers
    /// being removed included: the daemon replies to `Inhibit` once this is true. True outside
    /// maintenance (nothing to wait for).
    public var maintenanceSettled: Bool {
        !records.values.contains { isHeldByMaintenance($0) && $0.process != .none }
    }

    // MARK: Events

    /// Starts the fleet: spawns every worker that should run. `adopted` are processes of a
    /// previous daemon that the runner took over (by worker name); they count as running, and
    /// are stopped if they should not run. Names not in the configuration are ignored (the
    /// daemon stops those itself).
    public mutating func start(now: MonotonicInstant, adopted: [String: Int32] = [:]) -> [FleetAction] {
        guard !isStarted else { return [] }
        isStarted = true
        var effects = Effects()
        if needsPersist {
            needsPersist = false
            effects.actions.append(.persist(enableState))
        }
        for name in records.keys.sorted() {
            guard var record = records[name] else { continue }
            if let pid = adopted[name] {
                record.process = .live(pid)
                record.startedAt = now
                effects.property(name, .pid(pid))
                effects.setState(&record, .running, "adopted")
            }
            let keep = reconcile(&record, cause: restingCause(record) ?? "daemon started", now: now, &effects)
            if keep { records[name] = record } else { records[name] = nil }
        }
        return effects.actions
    }

    /// Applies one event and returns what to do. Only the bus requests (`enable`, `disable`,
    /// `restart`, `stop`, `start`, `workerLogLevel`) throw;
    /// stale process and timer events (an old pid, a worker that is gone) are ignored.
    public mutating func handle(_ event: FleetEvent, now: MonotonicInstant) throws(FleetError) -> [FleetAction] {
        var effects = Effects()
        switch event {
        case .enable(let name):
            var record = try requireWorker(name)
            if !record.enabled {
                record.enabled = true
                effects.property(name, .enabled(true))
                recordChoice(name, enabled: true, &effects)
                resetRestartHistory(&record, &effects)
                commit(&record, cause: "enabled", now: now, &effects)
            } else if record.failed || record.stoppedByHand {
                // Enable on a failed or stopped worker acts as Restart.
                record.stoppedByHand = false
                resetRestartHistory(&record, &effects)
                commit(&record, cause: "enabled", now: now, &effects)
            }
        case .disable(let name):
            var record = try requireWorker(name)
            if record.enabled {
                record.enabled = false
                record.failed = false
                record.stoppedByHand = false
                effects.property(name, .enabled(false))
                recordChoice(name, enabled: false, &effects)
                commit(&record, cause: "disabled", now: now, &effects)
            }
        case .restart(let name):
            var record = try requireWorker(name)
            guard record.enabled else { throw .disabled(name) }
            record.stoppedByHand = false
            resetRestartHistory(&record, &effects)
            cancelBackoff(&record, &effects)
            if record.process != .none { record.restartPending = true }
            commit(&record, cause: "restart requested", now: now, &effects)
        case .stop(let name):
            var record = try requireWorker(name)
            // A disabled worker has nothing to stop and stays disabled.
            if record.enabled && !record.stoppedByHand {
                record.stoppedByHand = true
                commit(&record, cause: "stop requested", now: now, &effects)
            }
        case .start(let name):
            var record = try requireWorker(name)
            guard record.enabled else { throw .disabled(name) }
            // Running, starting, in backoff or standby: nothing to do (the rules already run it).
            if record.stoppedByHand || record.failed {
                record.stoppedByHand = false
                resetRestartHistory(&record, &effects)
                commit(&record, cause: "start requested", now: now, &effects)
            }
        case .managerLogLevel(let level):
            let before = effectiveLogLevels()
            managerLogLevel = level
            announceEffectiveLogLevels(changedFrom: before, &effects)
        case .workerLogLevel(let name, let level):
            var record = try requireWorker(name)
            let before = record.effectiveLogLevel(managerLogLevel)
            if record.logLevel != level {
                record.logLevel = level
                effects.property(name, .logLevel(level))
            }
            let after = record.effectiveLogLevel(managerLogLevel)
            if after != before { effects.property(name, .effectiveLogLevel(after)) }
            records[name] = record
        case .roleChanged(let role):
            updateRole(now: now, &effects) { $0.report(role, at: now) }
        case .roleTimerFired:
            updateRole(now: now, timerConsumed: true, &effects) { $0.expireLease(at: now) }
        case .maintenance(let hold):
            updateMaintenance(hold, now: now, &effects)
        case .processStarted(let name, let pid):
            guard var record = records[name], record.process == .spawning else { break }
            record.process = .live(pid)
            effects.property(name, .pid(pid))
            if record.stopRequested {
                // Asked to stop while its start was in flight: stop it now that it has a pid.
                effects.actions.append(.stop(name: name, pid: pid))
            } else {
                record.startedAt = now
                // A notify worker stays `starting` until READY=1.
                if record.definition.ready == .exec { effects.setState(&record, .running, "started") }
            }
            records[name] = record
        case .processReady(let name, let pid):
            guard var record = records[name], record.process == .live(pid), !record.stopRequested,
                record.state == .starting
            else { break }
            let reloaded = record.reloading
            record.reloading = false
            effects.setState(&record, .running, reloaded ? "reloaded (READY=1)" : "ready (READY=1)")
            records[name] = record
        case .processReloading(let name, let pid):
            guard var record = records[name], record.process == .live(pid), !record.stopRequested,
                record.state == .running
            else { break }
            record.reloading = true
            effects.setState(&record, .starting, "reloading (RELOADING=1)")
            records[name] = record
        case .processStopping(let name, let pid):
            guard var record = records[name], record.process == .live(pid), !record.stopRequested,
                record.state == .running || record.state == .starting
            else { break }
            effects.setState(&record, .stopping, "stopping by itself (STOPPING=1)")
            records[name] = record
        case .processStatus(let name, let pid, let text):
            guard var record = records[name], record.process == .live(pid), record.statusText != text else { break }
            record.statusText = text
            effects.property(name, .statusText(text))
            records[name] = record
        case .startFailed(let name, let reason, let retry):
            guard var record = records[name], record.process == .spawning else { break }
            record.process = .none
            if record.stopRequested {
                commit(&record, cause: record.cause, now: now, &effects)
            } else if !retry {
                record.stopRequested = false
                record.failed = true
                commit(&record, cause: "failed to start: \(reason)", now: now, &effects)
            } else {
                unexpectedEnd(&record, reason: "failed to start: \(reason)", ranFor: nil, now: now, &effects)
                records[name] = record
            }
        case .processExited(let name, let pid, let status):
            guard var record = records[name], record.process == .live(pid) else { break }
            record.process = .none
            record.lastExit = status
            effects.property(name, .pid(nil))
            effects.property(name, .lastExit(status))
            if record.stopRequested {
                commit(&record, cause: record.cause, now: now, &effects)
            } else {
                let ranFor = record.startedAt.map { now.seconds(since: $0) }
                unexpectedEnd(&record, reason: status.reason, ranFor: ranFor, now: now, &effects)
                records[name] = record
            }
        case .timerFired(let name):
            guard var record = records[name], let due = record.backoffUntil else { break }
            guard now >= due else {
                // Early: keep waiting (the daemon's timer is consumed, so arm it again).
                effects.actions.append(.scheduleTimer(name: name, at: due))
                break
            }
            record.backoffUntil = nil
            record.restarts &+= 1
            effects.property(name, .restarts(record.restarts))
            commit(&record, cause: "restart delay elapsed", now: now, &effects)
        case .reload(let newConfiguration):
            reload(newConfiguration, now: now, &effects)
        case .shutdown:
            isShuttingDown = true
            for name in records.keys.sorted() {
                guard var record = records[name] else { continue }
                commit(&record, cause: "shutting down", now: now, &effects)
            }
        }
        return effects.actions
    }

    // MARK: Rules

    private func requireWorker(_ name: String) throws(FleetError) -> WorkerRecord {
        guard let record = record(named: name), !record.removing else { throw .noSuchWorker(name) }
        return record
    }

    private func shouldRun(_ record: WorkerRecord) -> Bool {
        isStarted && !isShuttingDown && record.enabled && !record.failed && !record.stoppedByHand && !record.removing
            && mayRun(record.definition.runOn, roleInForce: roleState.inForce) && !isHeldByMaintenance(record)
    }

    private func isHeldByMaintenance(_ record: WorkerRecord) -> Bool {
        maintenance != nil && !record.definition.runDuringMaintenance
    }

    /// Why a worker rests, if it does: the cause reported when it stops or stays down.
    private func restingCause(_ record: WorkerRecord) -> String? {
        if !record.enabled { return "disabled" }
        if record.stoppedByHand { return "stop requested" }
        if !mayRun(record.definition.runOn, roleInForce: roleState.inForce) { return "HA role \(roleState.inForce.rawValue)" }
        if let maintenance, isHeldByMaintenance(record) { return maintenance.reason }
        return nil
    }

    /// The reason of a worker coming to rest in `standby`: maintenance's when maintenance alone
    /// keeps it there (whatever event brought it), so `StateReason` names the inhibitor to wait
    /// for; else the cause of the event.
    private func standbyReason(_ record: WorkerRecord, cause: String) -> String {
        guard let maintenance, !isShuttingDown, isHeldByMaintenance(record),
            mayRun(record.definition.runOn, roleInForce: roleState.inForce)
        else { return cause }
        return maintenance.reason
    }

    /// Reconciles and stores (or drops) the record.
    private mutating func commit(_ record: inout WorkerRecord, cause: String, now: MonotonicInstant, _ effects: inout Effects) {
        let name = record.definition.name
        if reconcile(&record, cause: cause, now: now, &effects) {
            records[name] = record
        } else {
            records[name] = nil
        }
    }

    /// Moves a worker toward what the rules want, never giving it a second process: a process
    /// that must go is stopped and the next start waits for its exit. Returns false when the
    /// worker is removed and gone.
    private func reconcile(_ record: inout WorkerRecord, cause: String, now: MonotonicInstant, _ effects: inout Effects) -> Bool {
        let name = record.definition.name
        record.cause = cause
        let wanted = shouldRun(record)
        switch record.process {
        case .spawning, .live:
            if !wanted || record.restartPending {
                if !record.stopRequested {
                    record.stopRequested = true
                    if case .live(let pid) = record.process { effects.actions.append(.stop(name: name, pid: pid)) }
                }
                effects.setState(&record, .stopping, cause)
            }
            return true
        case .none:
            record.restartPending = false
            record.stopRequested = false
            if wanted {
                if record.backoffUntil == nil {
                    record.process = .spawning
                    record.startedAt = nil
                    record.reloading = false
                    if !record.statusText.isEmpty {
                        record.statusText = ""
                        effects.property(name, .statusText(""))
                    }
                    effects.actions.append(.spawn(name: name, definition: record.definition))
                    effects.setState(&record, .starting, cause)
                }
                return true
            }
            cancelBackoff(&record, &effects)
            if record.removing {
                effects.actions.append(.workerRemoved(name: name))
                return false
            }
            let resting: WorkerState =
                !record.enabled ? .disabled : record.stoppedByHand ? .stopped : record.failed ? .failed : .standby
            effects.setState(&record, resting, resting == .standby ? standbyReason(record, cause: cause) : cause)
            return true
        }
    }

    /// An exit or failed start that nobody asked for: back off, restart at once, or fail.
    private func unexpectedEnd(
        _ record: inout WorkerRecord, reason: String, ranFor: Double?, now: MonotonicInstant, _ effects: inout Effects
    ) {
        let name = record.definition.name
        let definition = record.definition
        record.stopRequested = false
        if let ranFor, ranFor >= definition.stableAfter {
            record.nextDelay = definition.restartDelay
        }
        record.failureTimes.append(now)
        // Inclusive window, as systemd's: an exit exactly `interval` ago still counts.
        record.failureTimes.removeAll { now.seconds(since: $0) > definition.startLimitInterval }
        if definition.startLimitBurst > 0, record.failureTimes.count >= definition.startLimitBurst {
            record.failed = true
            let cause = "start limit hit: \(record.failureTimes.count) exits in \(formatSeconds(definition.startLimitInterval)) s"
            _ = reconcile(&record, cause: cause, now: now, &effects)
            return
        }
        let delay = record.nextDelay
        record.nextDelay = min(delay * 2, definition.restartDelayMax)
        if delay == 0 {
            record.restarts &+= 1
            effects.property(name, .restarts(record.restarts))
            _ = reconcile(&record, cause: reason, now: now, &effects)
        } else {
            let due = now.advanced(bySeconds: delay)
            record.backoffUntil = due
            record.cause = reason
            effects.actions.append(.scheduleTimer(name: name, at: due))
            effects.setState(&record, .backoff, reason)
        }
    }

    /// A fresh start: by `Restart`, by `Enable` (of a disabled or failed worker), or by the
    /// configuration enabling it.
    private func resetRestartHistory(_ record: inout WorkerRecord, _ effects: inout Effects) {
        record.failed = false
        record.failureTimes = []
        record.nextDelay = record.definition.restartDelay
        if record.restarts != 0 {
            record.restarts = 0
            effects.property(record.definition.name, .restarts(0))
        }
    }

    private func cancelBackoff(_ record: inout WorkerRecord, _ effects: inout Effects) {
        if record.backoffUntil != nil {
            record.backoffUntil = nil
            effects.actions.append(.cancelTimer(name: record.definition.name))
        }
    }

    /// Changes the role state, re-arms or cancels the role timer when the keep's deadline moved
    /// (`timerConsumed`: the daemon's timer just fired, so it is re-armed whenever a deadline
    /// remains), and reconciles every worker for which the run rule's answer changed.
    private mutating func updateRole(
        now: MonotonicInstant, timerConsumed: Bool = false, _ effects: inout Effects, _ change: (inout RoleState) -> Void
    ) {
        let before = roleState.inForce
        let deadlineBefore = timerConsumed ? nil : roleState.timerDeadline
        change(&roleState)
        roleTimerActions(deadlineBefore: deadlineBefore, &effects)
        let after = roleState.inForce
        guard before != after else { return }
        let cause =
            if roleState.keepExpired {
                "HA role unknown for \(formatSeconds(roleState.keepFor)) s (keep-for)"
            } else if roleState.leaseExpired, after == .unknown {
                "HA role unknown (lease of \(formatSeconds(roleState.lease ?? 0)) s ran out)"
            } else {
                "HA role \(after.rawValue)"
            }
        for name in records.keys.sorted() {
            guard var record = records[name] else { continue }
            let runOn = record.definition.runOn
            if mayRun(runOn, roleInForce: before) != mayRun(runOn, roleInForce: after) {
                commit(&record, cause: cause, now: now, &effects)
            }
        }
    }

    /// Sets the holder and reconciles every worker for which the rules' answer changed: only
    /// the start or the end of maintenance changes it (a worker still stopping when it ends
    /// starts after its exit, as for any stop).
    private mutating func updateMaintenance(_ hold: MaintenanceHold?, now: MonotonicInstant, _ effects: inout Effects) {
        let ranBefore = Set(records.values.filter(shouldRun).map(\.definition.name))
        maintenance = hold
        let cause = hold?.reason ?? "maintenance ended"
        for name in records.keys.sorted() {
            guard var record = records[name], shouldRun(record) != ranBefore.contains(name) else { continue }
            commit(&record, cause: cause, now: now, &effects)
        }
    }

    private func roleTimerActions(deadlineBefore: MonotonicInstant?, _ effects: inout Effects) {
        let deadline = roleState.timerDeadline
        guard deadline != deadlineBefore else { return }
        effects.actions.append(deadline.map { .scheduleRoleTimer(at: $0) } ?? .cancelRoleTimer)
    }

    private func effectiveLogLevels() -> [String: LogLevel] {
        records.mapValues { $0.effectiveLogLevel(managerLogLevel) }
    }

    /// `effectiveLogLevel` for every worker whose level in force is not what it was.
    private func announceEffectiveLogLevels(changedFrom before: [String: LogLevel], _ effects: inout Effects) {
        for name in records.keys.sorted() {
            guard let after = records[name]?.effectiveLogLevel(managerLogLevel), let old = before[name], old != after else {
                continue
            }
            effects.property(name, .effectiveLogLevel(after))
        }
    }

    /// A bus choice: persisted with the configured value it was made against.
    private mutating func recordChoice(_ name: String, enabled: Bool, _ effects: inout Effects) {
        guard let configured = records[name]?.definition.enabled else { return }
        let intent = EnableIntent(enabled: enabled, configuredEnabled: configured)
        guard enableState.intents[name] != intent else { return }
        enableState.intents[name] = intent
        effects.actions.append(.persist(enableState))
    }

    private mutating func reload(_ newConfiguration: Configuration, now: MonotonicInstant, _ effects: inout Effects) {
        let roleBefore = roleState.inForce
        let deadlineBefore = roleState.timerDeadline
        let previousEnableState = enableState
        let logLevelsBefore = effectiveLogLevels()
        let sourceChanged = newConfiguration.ha.source != configuration.ha.source
        // The latest intent wins: a changed `[daemon] log-level` replaces a level set over the bus.
        if newConfiguration.daemon.logLevel != configuration.daemon.logLevel { managerLogLevel = newConfiguration.daemon.logLevel }
        configuration = newConfiguration
        roleState.configure(
            onLost: newConfiguration.ha.onLost, keepFor: newConfiguration.ha.keepFor, lease: newConfiguration.ha.leaseInForce,
            at: now)
        // Before any worker starts: an added worker must not run under the old source's role.
        if sourceChanged { roleState.report(newConfiguration.ha.source.initialRole, at: now) }
        roleTimerActions(deadlineBefore: deadlineBefore, &effects)
        let roleAfter = roleState.inForce
        enableState = enableState.pruned(for: newConfiguration)
        let newNames = Set(newConfiguration.workers.map(\.name))

        for name in records.keys.sorted() where !newNames.contains(name) {
            guard var record = records[name], !record.removing else { continue }
            record.removing = true
            commit(&record, cause: "removed from configuration", now: now, &effects)
        }

        for definition in newConfiguration.workers {
            let name = definition.name
            guard var record = records[name] else {
                let enabled = enableState.effectiveEnabled(for: definition)
                var record = WorkerRecord(definition: definition, enabled: enabled, state: enabled ? .standby : .disabled)
                record.reason = enabled ? standbyReason(record, cause: "added") : "added"
                effects.actions.append(.workerAdded(record.status(managerLogLevel: managerLogLevel)))
                commit(&record, cause: restingCause(record) ?? "added", now: now, &effects)
                continue
            }
            let old = record.definition
            let wasRemoving = record.removing
            record.removing = false
            record.definition = definition
            var cause: String? = nil

            let enabled = enableState.effectiveEnabled(for: definition)
            if enabled != record.enabled {
                record.enabled = enabled
                effects.property(name, .enabled(enabled))
                if enabled {
                    resetRestartHistory(&record, &effects)
                } else {
                    record.failed = false
                    record.stoppedByHand = false
                }
                cause = enabled ? "enabled in configuration" : "disabled in configuration"
            }
            if wasRemoving || old.processDiffers(from: definition) {
                if record.process != .none { record.restartPending = true }
                if record.backoffUntil != nil {
                    cancelBackoff(&record, &effects)
                    cause = cause ?? "configuration changed"
                }
                cause = cause ?? "configuration changed"
            }
            if old.runOn != definition.runOn {
                effects.property(name, .runOn(definition.runOn))
            }
            // As for `enabled`: a changed `log-level` key replaces a level set over the bus.
            if old.logLevel != definition.logLevel, record.logLevel != definition.logLevel {
                record.logLevel = definition.logLevel
                effects.property(name, .logLevel(definition.logLevel))
            }
            // The run rule's answer may change through run-on, on-lost, or both at once.
            if mayRun(old.runOn, roleInForce: roleBefore) != mayRun(definition.runOn, roleInForce: roleAfter) {
                cause = cause ?? (old.runOn != definition.runOn ? "configuration changed" : "HA role \(roleAfter.rawValue)")
            }
            // A flipped `run-during-maintenance` applies at once while maintenance is held.
            if let maintenance, old.runDuringMaintenance != definition.runDuringMaintenance {
                cause = cause ?? (definition.runDuringMaintenance ? "configuration changed" : maintenance.reason)
            }
            // A changed restart policy applies from now on.
            record.nextDelay = min(max(record.nextDelay, definition.restartDelay), definition.restartDelayMax)
            if let cause {
                commit(&record, cause: cause, now: now, &effects)
            } else {
                records[name] = record
            }
        }
        announceEffectiveLogLevels(changedFrom: logLevelsBefore, &effects)
        if enableState != previousEnableState {
            effects.actions.append(.persist(enableState))
        }
    }
}

// MARK: - Internals

private enum ProcessPhase: Sendable, Equatable {
    /// No process.
    case none
    /// A `spawn` went out; neither `processStarted` nor `startFailed` came back yet.
    case spawning
    case live(Int32)
}

private struct WorkerRecord: Sendable {
    var definition: WorkerDefinition
    var enabled: Bool
    var state: WorkerState
    var reason = ""
    var process = ProcessPhase.none
    /// The current process must go (a `stop` went out, or goes out as soon as it has a pid).
    var stopRequested = false
    /// Start again once the current process is gone (Restart, changed definition).
    var restartPending = false
    /// Hit the start limit; stays until Restart, Start, Enable or Disable.
    var failed = false
    /// `Stop` by hand; stays until Start, Restart, Enable or Disable (never persisted).
    var stoppedByHand = false
    /// Its own level: the `log-level` key, or what the bus set since.
    var logLevel: LogLevel?
    /// Gone from the configuration; dropped once it has no process.
    var removing = false
    var backoffUntil: MonotonicInstant? = nil
    var nextDelay: Double
    /// Times of recent unexpected exits and failed starts, for the start limit.
    var failureTimes: [MonotonicInstant] = []
    var startedAt: MonotonicInstant? = nil
    var restarts: UInt32 = 0
    var lastExit: WorkerExit? = nil
    /// The cause of the latest decision; reported when a requested stop completes.
    var cause = ""
    /// `starting` again after RELOADING=1, until READY=1.
    var reloading = false
    var statusText = ""

    init(definition: WorkerDefinition, enabled: Bool, state: WorkerState) {
        self.definition = definition
        self.enabled = enabled
        self.state = state
        nextDelay = definition.restartDelay
        logLevel = definition.logLevel
    }

    func effectiveLogLevel(_ managerLogLevel: LogLevel) -> LogLevel { logLevel ?? managerLogLevel }

    var pid: Int32? {
        if case .live(let pid) = process { return pid }
        return nil
    }

    func status(managerLogLevel: LogLevel) -> WorkerStatus {
        WorkerStatus(
            definition: definition, state: state, reason: reason, enabled: enabled, pid: pid, restarts: restarts,
            lastExit: lastExit, logLevel: logLevel, effectiveLogLevel: effectiveLogLevel(managerLogLevel),
            statusText: statusText)
    }
}

private struct Effects {
    var actions: [FleetAction] = []

    /// Emits `stateChanged` only when the state really changes.
    mutating func setState(_ record: inout WorkerRecord, _ state: WorkerState, _ reason: String) {
        guard record.state != state else { return }
        record.state = state
        record.reason = reason
        actions.append(.stateChanged(name: record.definition.name, state: state, pid: record.pid, reason: reason))
    }

    /// Appends a property change, merged into an immediately preceding one for the same worker.
    mutating func property(_ name: String, _ property: WorkerProperty) {
        if case .propertiesChanged(let lastName, var properties)? = actions.last, lastName == name {
            properties.removeAll { sameProperty($0, property) }
            properties.append(property)
            actions[actions.count - 1] = .propertiesChanged(name: name, properties)
        } else {
            actions.append(.propertiesChanged(name: name, [property]))
        }
    }

    private func sameProperty(_ a: WorkerProperty, _ b: WorkerProperty) -> Bool {
        switch (a, b) {
        case (.enabled, .enabled), (.pid, .pid), (.restarts, .restarts), (.lastExit, .lastExit), (.runOn, .runOn),
            (.logLevel, .logLevel), (.effectiveLogLevel, .effectiveLogLevel), (.statusText, .statusText):
            true
        default: false
        }
    }
}
