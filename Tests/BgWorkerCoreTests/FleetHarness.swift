@testable import BgWorkerCore

func definition(
    _ name: String = "w", runOn: RunOn = .primary, enabled: Bool = true, delay: Double = 1, delayMax: Double = 60,
    stableAfter: Double = 10, burst: Int = 5, interval: Double = 60, exec: [String] = ["/bin/worker"],
    logLevel: LogLevel? = nil, duringMaintenance: Bool = false
) -> WorkerDefinition {
    var definition = WorkerDefinition(name: name, exec: exec)
    definition.runOn = runOn
    definition.enabled = enabled
    definition.restartDelay = delay
    definition.restartDelayMax = delayMax
    definition.stableAfter = stableAfter
    definition.startLimitBurst = burst
    definition.startLimitInterval = interval
    definition.logLevel = logLevel
    definition.runDuringMaintenance = duringMaintenance
    return definition
}

func configuration(
    _ workers: [WorkerDefinition], onLost: OnLost = .stop, keepFor: Double = 0, source: HASource = .none
) -> Configuration {
    Configuration(ha: HASettings(source: source, onLost: onLost, keepFor: keepFor), workers: workers)
}

/// Drives a fleet with a fake clock and checks, after every step, the invariants that hold
/// whatever happens: one stateChanged per real change, at most one process per worker, timers
/// only for backoff workers, settled workers obeying the run rule, no spawn that maintenance holds.
struct FleetHarness {
    var fleet: Fleet
    var now = MonotonicInstant(nanoseconds: 0)
    /// States as announced by stateChanged actions (what a bus client would believe).
    var announced: [String: WorkerState] = [:]
    /// Effective log levels as announced (initial values, workerAdded, propertiesChanged).
    var announcedLevels: [String: LogLevel] = [:]
    /// Timers armed by actions.
    var timers: [String: MonotonicInstant] = [:]
    /// The role timer armed by actions.
    var roleTimer: MonotonicInstant? = nil
    /// Spawns awaiting processStarted/startFailed, and live pids, as the runner would see them.
    var spawning: Set<String> = []
    var live: [String: Int32] = [:]
    /// Stops sent and not yet answered by an exit.
    var stopsSent: [String: Int32] = [:]
    var nextPid: Int32 = 100
    var violations: [String] = []
    var lastActions: [FleetAction] = []
    var persisted: EnableState? = nil
    var removed: Set<String> = []
    /// The pid each worker last sent READY=1 from (`ready`).
    var readyFrom: [String: Int32] = [:]

    init(_ configuration: Configuration, role: HARole = .standalone, enableState: EnableState = EnableState(), start: Bool = true) {
        fleet = Fleet(configuration: configuration, enableState: enableState, role: role)
        for status in fleet.workers {
            announced[status.name] = status.state
            announcedLevels[status.name] = status.effectiveLogLevel
        }
        if start { self.start() }
    }

    mutating func start(adopted: [String: Int32] = [:]) {
        for (name, pid) in adopted { live[name] = pid }
        apply(fleet.start(now: now, adopted: adopted))
    }

    @discardableResult
    mutating func send(_ event: FleetEvent) throws(FleetError) -> [FleetAction] {
        // A fired timer is consumed, as the daemon's would be.
        if case .timerFired(let name) = event { timers[name] = nil }
        if event == .roleTimerFired { roleTimer = nil }
        let actions = try fleet.handle(event, now: now)
        apply(actions)
        return actions
    }

    /// Sends an event that must not throw.
    @discardableResult
    mutating func run(_ event: FleetEvent) -> [FleetAction] {
        do {
            return try send(event)
        } catch {
            violations.append("unexpected error \(error) for \(event)")
            return []
        }
    }

    mutating func advance(_ seconds: Double) {
        now = now.advanced(bySeconds: seconds)
    }

    func state(_ name: String = "w") -> WorkerState? { fleet.status(of: name)?.state }
    func pid(_ name: String = "w") -> Int32? { live[name] }

    // MARK: The simulated runner

    /// The runner reports the pending spawn as started.
    @discardableResult
    mutating func started(_ name: String = "w") -> Int32 {
        nextPid += 1
        if spawning.remove(name) != nil { live[name] = nextPid } else { violations.append("started(\(name)) without a spawn") }
        run(.processStarted(name, pid: nextPid))
        return nextPid
    }

    /// The runner reports the pending spawn as failed.
    mutating func failsToStart(_ name: String = "w", _ reason: String = "No such file or directory") {
        if spawning.remove(name) == nil { violations.append("failsToStart(\(name)) without a spawn") }
        run(.startFailed(name, reason: reason))
    }

    /// The process sends READY=1.
    mutating func ready(_ name: String = "w", pid: Int32? = nil) {
        let pid = pid ?? live[name] ?? 0
        readyFrom[name] = pid
        run(.processReady(name, pid: pid))
    }

    /// The live process exits by itself (or after a stop).
    mutating func exits(_ name: String = "w", _ status: WorkerExit = .exited(1)) {
        guard let pid = live[name] else {
            violations.append("exits(\(name)) without a live process")
            return
        }
        live[name] = nil
        stopsSent[name] = nil
        run(.processExited(name, pid: pid, status: status))
    }

    mutating func fireDueTimers() {
        for (name, due) in timers.sorted(by: { $0.value < $1.value }) where due <= now {
            timers[name] = nil
            run(.timerFired(name))
        }
    }

    /// Delivers the role timer if it is due.
    mutating func fireRoleTimerIfDue() {
        if let due = roleTimer, due <= now { run(.roleTimerFired) }
    }

    // MARK: Checking

    private mutating func apply(_ actions: [FleetAction]) {
        lastActions = actions
        for action in actions {
            switch action {
            case .spawn(let name, let definition):
                if spawning.contains(name) || live[name] != nil {
                    violations.append("second process for \(name) at \(now)")
                }
                if fleet.maintenance != nil && !definition.runDuringMaintenance {
                    violations.append("spawn of \(name) during maintenance at \(now)")
                }
                spawning.insert(name)
            case .stop(let name, let pid):
                if live[name] != pid { violations.append("stop of \(name) pid \(pid), live is \(String(describing: live[name]))") }
                stopsSent[name] = pid
            case .scheduleTimer(let name, let at):
                timers[name] = at
            case .cancelTimer(let name):
                timers[name] = nil
            case .scheduleRoleTimer(let at):
                roleTimer = at
            case .cancelRoleTimer:
                if roleTimer == nil { violations.append("cancelRoleTimer without a role timer at \(now)") }
                roleTimer = nil
            case .stateChanged(let name, let state, let pid, let reason):
                if announced[name] == state { violations.append("stateChanged \(name) to the same state \(state)") }
                announced[name] = state
                // Resting where only maintenance holds it: the reason names the oldest inhibitor.
                if state == .standby, let hold = fleet.maintenance, fleet.isHeldByMaintenance(name), !fleet.isShuttingDown,
                    let runOn = fleet.status(of: name)?.definition.runOn, mayRun(runOn, roleInForce: fleet.roleState.inForce),
                    reason != hold.reason
                {
                    violations.append("\(name): standby under \(hold.reason) with reason \(reason)")
                }
                if state == .running && pid == nil { violations.append("running without pid: \(name)") }
                if state == .running, fleet.status(of: name)?.definition.ready == .notify, let pid, readyFrom[name] != pid,
                    !reason.hasPrefix("adopted")
                {
                    violations.append("notify worker \(name) running without READY=1 from pid \(pid)")
                }
            case .propertiesChanged(let name, let properties):
                for case .effectiveLogLevel(let level) in properties {
                    // PropertiesChanged of EffectiveLogLevel only when it really changes.
                    if announcedLevels[name] == level { violations.append("effectiveLogLevel \(name) to the same \(level)") }
                    announcedLevels[name] = level
                }
            case .workerAdded(let status):
                if announced[status.name] != nil { violations.append("workerAdded for existing \(status.name)") }
                announced[status.name] = status.state
                announcedLevels[status.name] = status.effectiveLogLevel
                removed.remove(status.name)
            case .workerRemoved(let name):
                if spawning.contains(name) || live[name] != nil { violations.append("removed \(name) with a process") }
                announced[name] = nil
                removed.insert(name)
            case .persist(let state):
                persisted = state
            }
        }
        checkInvariants()
    }

    mutating func checkInvariants() {
        if roleTimer != fleet.roleState.timerDeadline {
            violations.append("role timer \(String(describing: roleTimer)), deadline \(String(describing: fleet.roleState.timerDeadline))")
        }
        for status in fleet.workers {
            let name = status.name
            if announced[name] != status.state {
                violations.append("\(name): announced \(String(describing: announced[name])) but state is \(status.state)")
            }
            let hasTimer = timers[name] != nil
            if hasTimer != (status.state == .backoff) {
                violations.append("\(name): timer \(hasTimer) in state \(status.state)")
            }
            let shouldRun = fleet.shouldRun(name)
            let mayRunNow = mayRun(status.definition.runOn, roleInForce: fleet.roleState.inForce)
            switch status.state {
            case .running:
                if !shouldRun { violations.append("\(name): running but should not run") }
            case .standby:
                if !status.enabled || (mayRunNow && fleet.isStarted && !fleet.isShuttingDown && !fleet.isHeldByMaintenance(name)) {
                    violations.append("\(name): standby but enabled=\(status.enabled) mayRun=\(mayRunNow)")
                }
            case .disabled:
                if status.enabled { violations.append("\(name): disabled but enabled") }
            case .backoff:
                if !shouldRun { violations.append("\(name): backoff but should not run") }
            case .failed:
                if !status.enabled { violations.append("\(name): failed but not enabled") }
            case .stopped:
                if !status.enabled || shouldRun { violations.append("\(name): stopped but enabled=\(status.enabled) shouldRun=\(shouldRun)") }
            case .starting, .stopping:
                break
            }
            if announcedLevels[name] != status.effectiveLogLevel {
                violations.append("\(name): announced level \(String(describing: announcedLevels[name])), in force \(status.effectiveLogLevel)")
            }
            if status.effectiveLogLevel != (status.logLevel ?? fleet.managerLogLevel) {
                violations.append("\(name): effective level \(status.effectiveLogLevel) is neither its own nor the manager's")
            }
            if status.state.isSettled && status.state != .running && status.pid != nil {
                violations.append("\(name): \(status.state) with pid")
            }
        }
        // `maintenanceSettled` (the daemon's Inhibit replies on it): no held worker has a process.
        let heldBusy = fleet.workers.filter { fleet.isHeldByMaintenance($0.name) && (spawning.contains($0.name) || live[$0.name] != nil) }
        if fleet.maintenanceSettled != heldBusy.isEmpty {
            violations.append("maintenanceSettled \(fleet.maintenanceSettled), held with processes: \(heldBusy.map(\.name))")
        }
        for name in announced.keys where fleet.status(of: name) == nil {
            violations.append("\(name): announced but gone without workerRemoved")
        }
    }
}
