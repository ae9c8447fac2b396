import Testing

@testable import BgWorkerCore

func stateChanges(_ actions: [FleetAction]) -> [String] {
    actions.compactMap {
        if case .stateChanged(let name, let state, _, let reason) = $0 { return "\(name) \(state.rawValue): \(reason)" }
        return nil
    }
}

// MARK: - Every state x event

/// The events of the table; role events assume a `primary` worker.
enum TableEvent: String, CaseIterable, Sendable {
    case enable, disable, restart, roleForbids, roleAllows, processStarted, startFailed, processExited, timerFired
    case reloadChanged, reloadRemoved, shutdown, stop, start
}

/// Brings worker "w" (run-on primary) into a state; the harness's role is primary unless the
/// state needs otherwise.
func harness(in state: WorkerState) -> FleetHarness {
    switch state {
    case .disabled:
        return FleetHarness(configuration([definition(enabled: false)]), role: .primary)
    case .standby:
        return FleetHarness(configuration([definition()]), role: .secondary)
    case .starting:
        return FleetHarness(configuration([definition()]), role: .primary)
    case .running:
        var h = FleetHarness(configuration([definition()]), role: .primary)
        h.started()
        return h
    case .stopping:
        var h = FleetHarness(configuration([definition()]), role: .primary)
        h.started()
        h.run(.roleChanged(.secondary))
        return h
    case .backoff:
        var h = FleetHarness(configuration([definition()]), role: .primary)
        h.started()
        h.exits()
        return h
    case .failed:
        var h = FleetHarness(configuration([definition(burst: 1)]), role: .primary)
        h.started()
        h.exits()
        return h
    case .stopped:
        var h = FleetHarness(configuration([definition()]), role: .primary)
        h.started()
        h.run(.stop("w"))
        h.exits()
        return h
    }
}

func apply(_ event: TableEvent, to h: inout FleetHarness) -> FleetError? {
    do {
        switch event {
        case .enable: try h.send(.enable("w"))
        case .disable: try h.send(.disable("w"))
        case .restart: try h.send(.restart("w"))
        case .roleForbids: try h.send(.roleChanged(.secondary))
        case .roleAllows: try h.send(.roleChanged(.primary))
        case .processStarted:
            if h.spawning.contains("w") { h.started() } else { try h.send(.processStarted("w", pid: 9999)) }
        case .startFailed:
            if h.spawning.contains("w") { h.failsToStart() } else { try h.send(.startFailed("w", reason: "stale")) }
        case .processExited:
            if h.live["w"] != nil { h.exits() } else { try h.send(.processExited("w", pid: 9999, status: .exited(0))) }
        case .timerFired:
            h.advance(3600)
            try h.send(.timerFired("w"))
        case .reloadChanged:
            var changed = h.fleet.configuration
            changed.workers[0].exec = ["/bin/other"]
            try h.send(.reload(changed))
        case .reloadRemoved:
            try h.send(.reload(configuration([])))
        case .shutdown:
            try h.send(.shutdown)
        case .stop: try h.send(.stop("w"))
        case .start: try h.send(.start("w"))
        }
        return nil
    } catch {
        return error
    }
}

/// Expected state after each event (nil: the worker is gone).
private let transitions: [WorkerState: [TableEvent: WorkerState?]] = [
    .disabled: [
        .enable: .starting, .disable: .disabled, .restart: .disabled, .roleForbids: .disabled, .roleAllows: .disabled,
        .processStarted: .disabled, .startFailed: .disabled, .processExited: .disabled, .timerFired: .disabled,
        .reloadChanged: .disabled, .reloadRemoved: WorkerState?.none, .shutdown: .disabled,
        .stop: .disabled, .start: .disabled,
    ],
    .standby: [
        .enable: .standby, .disable: .disabled, .restart: .standby, .roleForbids: .standby, .roleAllows: .starting,
        .processStarted: .standby, .startFailed: .standby, .processExited: .standby, .timerFired: .standby,
        .reloadChanged: .standby, .reloadRemoved: WorkerState?.none, .shutdown: .standby,
        .stop: .stopped, .start: .standby,
    ],
    .starting: [
        .enable: .starting, .disable: .stopping, .restart: .stopping, .roleForbids: .stopping, .roleAllows: .starting,
        .processStarted: .running, .startFailed: .backoff, .processExited: .starting, .timerFired: .starting,
        .reloadChanged: .stopping, .reloadRemoved: .stopping, .shutdown: .stopping,
        .stop: .stopping, .start: .starting,
    ],
    .running: [
        .enable: .running, .disable: .stopping, .restart: .stopping, .roleForbids: .stopping, .roleAllows: .running,
        .processStarted: .running, .startFailed: .running, .processExited: .backoff, .timerFired: .running,
        .reloadChanged: .stopping, .reloadRemoved: .stopping, .shutdown: .stopping,
        .stop: .stopping, .start: .running,
    ],
    .stopping: [
        .enable: .stopping, .disable: .stopping, .restart: .stopping, .roleForbids: .stopping, .roleAllows: .stopping,
        .processStarted: .stopping, .startFailed: .stopping, .processExited: .standby, .timerFired: .stopping,
        .reloadChanged: .stopping, .reloadRemoved: .stopping, .shutdown: .stopping,
        .stop: .stopping, .start: .stopping,
    ],
    .backoff: [
        .enable: .backoff, .disable: .disabled, .restart: .starting, .roleForbids: .standby, .roleAllows: .backoff,
        .processStarted: .backoff, .startFailed: .backoff, .processExited: .backoff, .timerFired: .starting,
        .reloadChanged: .starting, .reloadRemoved: WorkerState?.none, .shutdown: .standby,
        .stop: .stopped, .start: .backoff,
    ],
    .failed: [
        .enable: .starting, .disable: .disabled, .restart: .starting, .roleForbids: .failed, .roleAllows: .failed,
        .processStarted: .failed, .startFailed: .failed, .processExited: .failed, .timerFired: .failed,
        .reloadChanged: .failed, .reloadRemoved: WorkerState?.none, .shutdown: .failed,
        .stop: .stopped, .start: .starting,
    ],
    .stopped: [
        .enable: .starting, .disable: .disabled, .restart: .starting, .roleForbids: .stopped, .roleAllows: .stopped,
        .processStarted: .stopped, .startFailed: .stopped, .processExited: .stopped, .timerFired: .stopped,
        .reloadChanged: .stopped, .reloadRemoved: WorkerState?.none, .shutdown: .stopped,
        .stop: .stopped, .start: .starting,
    ],
]

@Suite struct FleetTransitionTableTests {
    @Test(arguments: WorkerState.allCases)
    func everyEventFrom(state: WorkerState) {
        let start = harness(in: state)
        #expect(start.state() == state, "setup for \(state)")
        #expect(start.violations.isEmpty, "\(start.violations)")
        for event in TableEvent.allCases {
            var h = start
            let error = apply(event, to: &h)
            let expected = transitions[state]?[event] ?? .some(.failed)
            #expect(h.state() == expected, "\(state) + \(event)")
            #expect(h.violations.isEmpty, "\(state) + \(event): \(h.violations)")
            if state == .disabled && (event == .restart || event == .start) {
                #expect(error == .disabled("w"))
            } else {
                #expect(error == nil, "\(state) + \(event)")
            }
        }
    }

    @Test func unknownNamesAreNoSuchWorker() {
        var h = FleetHarness(configuration([definition()]))
        for event in [FleetEvent.enable("x"), .disable("x"), .restart("x"), .stop("x"), .start("x"), .workerLogLevel("x", .debug)] {
            #expect(throws: FleetError.noSuchWorker("x")) { try h.send(event) }
        }
        // Stale runner events about unknown workers are ignored.
        #expect(h.run(.processExited("x", pid: 1, status: .exited(0))) == [])
        #expect(h.run(.timerFired("x")) == [])
        #expect(h.violations.isEmpty)
    }
}

// MARK: - Restart policy

@Suite struct RestartPolicyTests {
    @Test func anyExitIsUnexpectedAndBacksOff() {
        for status in [WorkerExit.exited(0), .exited(3), .killed(11), .dumped(6)] {
            var h = FleetHarness(configuration([definition()]))
            h.started()
            h.advance(2)
            h.exits("w", status)
            #expect(h.state() == .backoff)
            #expect(h.timers["w"] == MonotonicInstant.seconds(3))
            #expect(h.fleet.status(of: "w")?.lastExit == status)
            #expect(h.fleet.status(of: "w")?.reason == status.reason)
        }
        #expect(WorkerExit.exited(3).reason == "exited with status 3")
        #expect(WorkerExit.killed(11).reason == "killed by SIGSEGV")
        #expect(WorkerExit.killed(9).description == "killed SIGKILL")
        #expect(WorkerExit.dumped(11).description == "dumped SIGSEGV")
    }

    /// Issue 15: a worker that cannot start because the daemon is out of fds (`retry: false`)
    /// fails at once with the runner's text, instead of backing off and retrying for ever
    /// (335 of 1,000 workers sat in backoff with `pipe2: Too many open files`); Restart starts it again.
    @Test func aStartThatCannotBeRetriedFailsAtOnceWithoutABackoffTimer() throws {
        var h = FleetHarness(configuration([definition(burst: 0)]))
        #expect(h.spawning.remove("w") != nil)
        h.run(.startFailed("w", reason: "pipe2: out of file descriptors", retry: false))
        #expect(h.state() == .failed)
        #expect(h.timers["w"] == nil)
        #expect(h.fleet.status(of: "w")?.reason == "failed to start: pipe2: out of file descriptors")
        try h.send(.restart("w"))
        #expect(h.spawning.contains("w"))
    }

    /// STATUS= counts states without listing (sorting) every worker (issue 15); same answer.
    @Test func stateCountsAgreeWithTheListOfWorkers() {
        var h = FleetHarness(configuration([definition("a"), definition("b"), definition("c", enabled: false)]))
        h.started("a")
        var listed: [WorkerState: Int] = [:]
        for worker in h.fleet.workers { listed[worker.state, default: 0] += 1 }
        #expect(h.fleet.stateCounts == listed)
        #expect(listed == [.running: 1, .starting: 1, .disabled: 1])
    }

    @Test func delayDoublesUpToTheMaximumAndRestartsAreCounted() {
        var h = FleetHarness(configuration([definition(delay: 1, delayMax: 10, burst: 0)]))
        var delays: [Double] = []
        for _ in 0..<7 {
            h.started()
            h.advance(1)  // shorter than stable-after
            h.exits()
            let due = h.timers["w"]!
            delays.append(due.seconds(since: h.now))
            h.now = due
            h.fireDueTimers()
            #expect(h.state() == .starting)
        }
        #expect(delays == [1, 2, 4, 8, 10, 10, 10])
        #expect(h.fleet.status(of: "w")?.restarts == 7)
        #expect(h.violations.isEmpty)
    }

    @Test func stableRunResetsTheDelay() {
        var h = FleetHarness(configuration([definition(delay: 1, delayMax: 60, stableAfter: 10, burst: 0)]))
        for _ in 0..<3 {
            h.started()
            h.advance(1)
            h.exits()
            h.now = h.timers["w"]!
            h.fireDueTimers()
        }
        // Next would be 8; a run of exactly stable-after resets to 1.
        h.started()
        h.advance(10)
        h.exits()
        #expect(h.timers["w"]!.seconds(since: h.now) == 1)
        h.now = h.timers["w"]!
        h.fireDueTimers()
        h.started()
        h.advance(9.999)
        h.exits()
        #expect(h.timers["w"]!.seconds(since: h.now) == 2)
    }

    @Test func zeroDelayRestartsAtOnceWithoutTimer() {
        var h = FleetHarness(configuration([definition(delay: 0, delayMax: 0, burst: 0)]))
        h.started()
        h.exits("w", .exited(7))
        #expect(h.state() == .starting)
        #expect(h.timers.isEmpty)
        #expect(stateChanges(h.lastActions) == ["w starting: exited with status 7"])
        #expect(h.fleet.status(of: "w")?.restarts == 1)
    }

    @Test func failedStartBacksOffAndCounts() {
        var h = FleetHarness(configuration([definition(burst: 2, interval: 60)]))
        h.failsToStart("w", "No such file or directory")
        #expect(h.state() == .backoff)
        #expect(h.fleet.status(of: "w")?.reason == "failed to start: No such file or directory")
        h.advance(1)
        h.fireDueTimers()
        h.failsToStart("w", "No such file or directory")
        #expect(h.state() == .failed)
        #expect(h.fleet.status(of: "w")?.reason == "start limit hit: 2 exits in 60 s")
        #expect(h.violations.isEmpty)
    }

    /// Exits at 0, 5 and `third`: with burst 3 in 10 s the worker fails iff third - 0 <= 10.
    @Test(arguments: [(10.0, true), (10.001, false), (9.0, true)])
    func startLimitWindowEdges(third: Double, fails: Bool) {
        var h = FleetHarness(configuration([definition(delay: 0, delayMax: 0, burst: 3, interval: 10)]))
        for at in [0.0, 5.0, third] {
            h.now = .seconds(at)
            h.started()
            h.exits()
        }
        #expect(h.state() == (fails ? .failed : .starting))
        if fails { #expect(h.fleet.status(of: "w")?.reason == "start limit hit: 3 exits in 10 s") }
        #expect(h.violations.isEmpty)
    }

    @Test func burstZeroNeverFails() {
        var h = FleetHarness(configuration([definition(delay: 0, delayMax: 0, burst: 0, interval: 60)]))
        for _ in 0..<1000 {
            h.started()
            h.exits()
        }
        #expect(h.state() == .starting)
        #expect(h.fleet.status(of: "w")?.restarts == 1000)
        #expect(h.violations.isEmpty)
    }

    @Test func failedStaysUntilRestartOrEnableAndRoleDoesNotClearIt() throws {
        var h = FleetHarness(configuration([definition(burst: 1)]), role: .primary)
        h.started()
        h.exits()
        #expect(h.state() == .failed)
        h.run(.roleChanged(.secondary))
        h.run(.roleChanged(.primary))
        #expect(h.state() == .failed)
        h.run(.restart("w"))
        #expect(h.state() == .starting)
        #expect(h.fleet.status(of: "w")?.restarts == 0)
        h.started()
        h.exits()
        #expect(h.state() == .failed)
        h.run(.enable("w"))
        #expect(stateChanges(h.lastActions) == ["w starting: enabled"])
        #expect(h.violations.isEmpty)
    }

    @Test func restartsCounterResetsOnRestartAndEnable() {
        var h = FleetHarness(configuration([definition(delay: 0, delayMax: 0, burst: 0)]))
        h.started()
        h.exits()
        h.started()
        h.exits()
        #expect(h.fleet.status(of: "w")?.restarts == 2)
        h.started()
        h.run(.restart("w"))
        #expect(h.lastActions.contains(.propertiesChanged(name: "w", [.restarts(0)])))
        h.exits("w", .killed(15))
        h.started()
        h.exits()
        #expect(h.fleet.status(of: "w")?.restarts == 1)
        h.started()
        h.run(.disable("w"))
        h.exits("w", .killed(15))
        h.run(.enable("w"))
        #expect(h.fleet.status(of: "w")?.restarts == 0)
    }
}

// MARK: - Bus actions

@Suite struct BusActionTests {
    @Test func restartOfRunningStopsThenStartsAfterExit() {
        var h = FleetHarness(configuration([definition()]))
        let pid = h.started()
        h.run(.restart("w"))
        #expect(h.lastActions == [.stateChanged(name: "w", state: .stopping, pid: pid, reason: "restart requested"), .stop(name: "w", pid: pid)].reversed())
        #expect(!h.fleet.isSettled("w"))
        h.exits("w", .killed(15))
        #expect(h.state() == .starting)
        #expect(h.fleet.status(of: "w")?.reason == "restart requested")
        h.started()
        #expect(h.fleet.isSettled("w"))
        #expect(h.violations.isEmpty)
    }

    @Test func disableWhileStartingStopsOnceThePidIsKnown() {
        var h = FleetHarness(configuration([definition()]))
        h.run(.disable("w"))
        #expect(h.state() == .stopping)
        #expect(!h.lastActions.contains { if case .stop = $0 { true } else { false } })
        let pid = h.started()
        #expect(h.lastActions.contains(.stop(name: "w", pid: pid)))
        #expect(h.state() == .stopping)
        h.exits("w", .killed(15))
        #expect(h.state() == .disabled)
        #expect(h.fleet.status(of: "w")?.reason == "disabled")
        #expect(h.violations.isEmpty)
    }

    @Test func disableThenEnableWhileStoppingWaitsForTheExit() {
        var h = FleetHarness(configuration([definition()]))
        h.started()
        h.run(.disable("w"))
        h.run(.enable("w"))
        #expect(h.state() == .stopping)
        #expect(h.spawning.isEmpty)
        h.exits("w", .killed(15))
        #expect(h.state() == .starting)
        #expect(h.violations.isEmpty)
    }

    @Test func disableAndEnablePersistWithTheConfiguredValue() {
        var h = FleetHarness(configuration([definition()]))
        h.run(.disable("w"))
        #expect(h.persisted == EnableState(intents: ["w": EnableIntent(enabled: false, configuredEnabled: true)]))
        #expect(h.lastActions.contains(.propertiesChanged(name: "w", [.enabled(false)])))
        h.run(.enable("w"))
        #expect(h.persisted == EnableState(intents: ["w": EnableIntent(enabled: true, configuredEnabled: true)]))
        let before = h.lastActions
        h.run(.enable("w"))  // already enabled: nothing
        #expect(h.lastActions.isEmpty)
        _ = before
    }

    @Test func enableWhenTheRoleForbidsGoesToStandby() {
        var h = FleetHarness(configuration([definition(enabled: false)]), role: .secondary)
        h.run(.enable("w"))
        #expect(h.state() == .standby)
        #expect(h.fleet.isSettled("w"))
        #expect(h.spawning.isEmpty)
    }

    @Test func reasonsFollowTheContract() {
        var h = FleetHarness(configuration([definition()]), role: .primary)
        let pid = h.started()
        h.run(.roleChanged(.secondary))
        #expect(stateChanges(h.lastActions) == ["w stopping: HA role secondary"])
        h.exits("w", .killed(15))
        #expect(stateChanges(h.lastActions) == ["w standby: HA role secondary"])
        #expect(h.lastActions.contains(.propertiesChanged(name: "w", [.pid(nil), .lastExit(.killed(15))])))
        h.run(.disable("w"))
        #expect(stateChanges(h.lastActions) == ["w disabled: disabled"])
        _ = pid
    }
}

// MARK: - HA

@Suite struct HARuleTests {
    @Test func runRuleTable() {
        let expected: [HARole: Set<RunOn>] = [
            .standalone: [.primary, .secondary, .any],
            .primary: [.primary, .any],
            .secondary: [.secondary, .any],
            .unknown: [.any],
        ]
        for role in HARole.allCases {
            for runOn in RunOn.allCases {
                #expect(mayRun(runOn, roleInForce: role) == expected[role]!.contains(runOn), "\(role) \(runOn)")
            }
        }
    }

    /// Role in force for every reported role x on-lost x last known role.
    @Test func roleInForceTable() {
        for onLost in OnLost.allCases {
            for lastKnown in [nil, HARole.primary, .secondary] {
                for reported in HARole.allCases {
                    var state = RoleState(reported: .unknown, onLost: onLost)
                    if let lastKnown { state.report(lastKnown, at: .seconds(0)) }
                    state.report(reported, at: .seconds(1))
                    let expected: HARole =
                        switch (reported, onLost, lastKnown) {
                        case (.unknown, .keep, .some(let known)): known
                        default: reported
                        }
                    #expect(state.inForce == expected, "\(reported) \(onLost) \(String(describing: lastKnown))")
                    #expect(state.reported == reported)
                }
            }
        }
        // standalone is never "last known".
        var state = RoleState(reported: .standalone, onLost: .keep)
        state.report(.unknown, at: .seconds(0))
        #expect(state.inForce == .unknown)
    }

    /// The fleet applies the rule: for every run-on x on-lost x last known, a worker that was
    /// running under the last known role ends in the right state when the role becomes unknown.
    @Test func unknownRoleInTheFleet() {
        for onLost in OnLost.allCases {
            for runOn in RunOn.allCases {
                for lastKnown in [nil, HARole.primary, .secondary] {
                    var h = FleetHarness(configuration([definition(runOn: runOn)], onLost: onLost), role: lastKnown ?? .unknown)
                    if h.state() == .starting { h.started() }
                    h.run(.roleChanged(.unknown))
                    if h.state() == .stopping { h.exits("w", .killed(15)) }
                    let inForce = lastKnown != nil && onLost == .keep ? lastKnown! : .unknown
                    let runs = mayRun(runOn, roleInForce: inForce)
                    #expect(h.state() == (runs ? .running : .standby), "\(onLost) \(runOn) \(String(describing: lastKnown))")
                    #expect(h.violations.isEmpty)
                }
            }
        }
    }

    @Test func roleBurstWhileStoppingNeverSpawnsEarly() {
        var h = FleetHarness(configuration([definition()]), role: .primary)
        h.started()
        for role in [HARole.secondary, .primary, .unknown, .secondary, .primary] {
            h.run(.roleChanged(role))
            #expect(h.spawning.isEmpty)
            #expect(h.state() == .stopping)
        }
        h.exits("w", .killed(15))
        #expect(h.state() == .starting)
        #expect(h.fleet.status(of: "w")?.reason == "HA role primary")
        h.started()
        h.run(.roleChanged(.secondary))
        h.run(.roleChanged(.primary))
        h.run(.roleChanged(.secondary))
        h.exits("w", .killed(15))
        #expect(h.state() == .standby)
        #expect(h.violations.isEmpty)
    }

    @Test func roleForbidsDuringBackoffGoesToStandby() {
        var h = FleetHarness(configuration([definition()]), role: .primary)
        h.started()
        h.exits()
        h.run(.roleChanged(.secondary))
        #expect(h.state() == .standby)
        #expect(h.lastActions.contains(.cancelTimer(name: "w")))
        h.run(.roleChanged(.primary))
        #expect(h.state() == .starting)
        #expect(h.violations.isEmpty)
    }
}

// MARK: - Reload

@Suite struct ReloadTests {
    @Test func addRemoveChangeEnabledChangedUnchanged() {
        let a = definition("a", runOn: .any)
        let b = definition("b", runOn: .any)
        let c = definition("c", runOn: .any)
        let d = definition("d", runOn: .any)
        var h = FleetHarness(configuration([a, b, c, d]))
        for name in ["a", "b", "c", "d"] { h.started(name) }

        var changedC = c
        changedC.environment = ["X": "1"]
        var disabledD = d
        disabledD.enabled = false
        let e = definition("e", runOn: .any)
        h.run(.reload(configuration([a, changedC, disabledD, e])))
        #expect(h.state("a") == .running)  // unchanged
        #expect(h.state("b") == .stopping)  // removed
        #expect(h.state("c") == .stopping)  // changed
        #expect(h.state("d") == .stopping)  // disabled in configuration
        #expect(h.state("e") == .starting)  // added
        #expect(h.lastActions.contains { if case .workerAdded(let status) = $0 { status.name == "e" } else { false } })
        #expect(!h.lastActions.contains { action in
            if case .stateChanged(let name, _, _, _) = action { name == "a" } else { false }
        })

        h.exits("b", .killed(15))
        #expect(h.lastActions.contains(.workerRemoved(name: "b")))
        #expect(h.fleet.status(of: "b") == nil)
        h.exits("c", .killed(15))
        #expect(h.state("c") == .starting)
        #expect(h.fleet.status(of: "c")?.reason == "configuration changed")
        h.exits("d", .killed(15))
        #expect(h.state("d") == .disabled)
        #expect(h.fleet.status(of: "d")?.reason == "disabled in configuration")
        #expect(h.violations.isEmpty)
    }

    @Test func unchangedReloadDoesNothing() {
        let config = configuration([definition("a"), definition("b", enabled: false)])
        var h = FleetHarness(config)
        h.started("a")
        #expect(h.run(.reload(config)) == [])
    }

    @Test func policyChangeAppliesWithoutRestart() {
        var h = FleetHarness(configuration([definition()]))
        h.started()
        var changed = definition(delay: 5, delayMax: 100, stableAfter: 1, burst: 2, interval: 9)
        changed.stopTimeout = 5
        h.run(.reload(configuration([changed])))
        #expect(h.lastActions.isEmpty)
        h.exits()
        #expect(h.timers["w"]!.seconds(since: h.now) == 5)
    }

    @Test func runOnChangeFollowsTheRule() {
        var h = FleetHarness(configuration([definition(runOn: .any)]), role: .primary)
        h.started()
        h.run(.reload(configuration([definition(runOn: .secondary)])))
        #expect(h.state() == .stopping)
        #expect(h.lastActions.contains(.propertiesChanged(name: "w", [.runOn(.secondary)])))
        h.exits("w", .killed(15))
        #expect(h.state() == .standby)
    }

    @Test func configuredEnabledChangeReplacesThePersistedChoice() {
        var h = FleetHarness(configuration([definition(enabled: true)]))
        h.started()
        h.run(.disable("w"))
        h.exits("w", .killed(15))
        // Same configured value: the bus choice stands.
        h.run(.reload(configuration([definition(enabled: true)])))
        #expect(h.state() == .disabled)
        // Configured value changes to false, then to true: the file is the newer intent.
        h.run(.reload(configuration([definition(enabled: false)])))
        #expect(h.persisted == EnableState())
        #expect(h.state() == .disabled)
        h.run(.reload(configuration([definition(enabled: true)])))
        #expect(h.state() == .starting)
        #expect(h.fleet.status(of: "w")?.reason == "enabled in configuration")
        #expect(h.violations.isEmpty)
    }

    @Test func removedThenReAddedWhileStoppingWaitsForTheOldProcess() {
        var h = FleetHarness(configuration([definition()]))
        h.started()
        h.run(.reload(configuration([])))
        #expect(throws: FleetError.noSuchWorker("w")) { try h.send(.restart("w")) }
        h.run(.reload(configuration([definition(exec: ["/bin/new"])])))
        #expect(h.state() == .stopping)
        #expect(h.spawning.isEmpty)
        h.exits("w", .killed(15))
        #expect(h.state() == .starting)
        #expect(!h.removed.contains("w"))
        #expect(h.violations.isEmpty)
    }

    @Test func changeDuringBackoffStartsAtOnce() {
        var h = FleetHarness(configuration([definition()]))
        h.started()
        h.exits()
        h.run(.reload(configuration([definition(exec: ["/bin/fixed"])])))
        #expect(h.state() == .starting)
        #expect(h.timers.isEmpty)
        #expect(h.lastActions.contains { if case .spawn(_, let d) = $0 { d.exec == ["/bin/fixed"] } else { false } })
    }

    @Test func onLostChangeReappliesTheRule() {
        var h = FleetHarness(configuration([definition()], onLost: .keep), role: .primary)
        h.started()
        h.run(.roleChanged(.unknown))
        #expect(h.state() == .running)
        h.run(.reload(configuration([definition()], onLost: .stop)))
        #expect(h.state() == .stopping)
        #expect(h.fleet.status(of: "w")?.reason == "HA role unknown")
    }
}

// MARK: - Startup, persistence, shutdown

@Suite struct LifecycleTests {
    @Test func startSpawnsWhatShouldRunAndRestsTheRest() {
        var h = FleetHarness(
            configuration([definition("p"), definition("s", runOn: .secondary), definition("off", enabled: false)]),
            role: .primary, start: false)
        #expect(h.fleet.workers.map(\.state) == [.disabled, .standby, .standby])
        #expect(!h.fleet.hasProcesses)
        h.start()
        #expect(h.state("p") == .starting)
        #expect(h.state("s") == .standby)
        #expect(h.state("off") == .disabled)
        #expect(h.lastActions.contains(.spawn(name: "p", definition: definition("p"))))
    }

    @Test func persistedChoiceWinsUntilTheConfiguredValueChanges() {
        let saved = EnableState(intents: [
            "a": EnableIntent(enabled: false, configuredEnabled: true),
            "b": EnableIntent(enabled: true, configuredEnabled: true),  // configured is now false
            "gone": EnableIntent(enabled: true, configuredEnabled: false),
        ])
        var h = FleetHarness(
            configuration([definition("a", runOn: .any), definition("b", runOn: .any, enabled: false)]), enableState: saved,
            start: false)
        h.start()
        #expect(h.state("a") == .disabled)
        #expect(h.state("b") == .disabled)
        #expect(h.persisted == EnableState(intents: ["a": EnableIntent(enabled: false, configuredEnabled: true)]))
    }

    @Test func adoptedProcessesRunOrAreStopped() {
        var h = FleetHarness(
            configuration([definition("a"), definition("b", runOn: .secondary), definition("c")]), role: .primary, start: false)
        h.start(adopted: ["a": 41, "b": 42, "zzz": 43])
        #expect(h.state("a") == .running)
        #expect(h.fleet.status(of: "a")?.pid == 41)
        #expect(h.state("b") == .stopping)
        #expect(h.lastActions.contains(.stop(name: "b", pid: 42)))
        #expect(h.state("c") == .starting)
        h.live["zzz"] = nil
        #expect(h.violations.isEmpty)
    }

    @Test func shutdownStopsEverythingAndStartsNothing() {
        var h = FleetHarness(configuration([definition("a"), definition("b"), definition("c")]))
        h.started("a")
        h.started("b")
        h.exits("b")  // backoff
        h.run(.shutdown)
        #expect(h.state("a") == .stopping)
        #expect(h.state("b") == .standby)
        #expect(h.state("c") == .stopping)  // its start is in flight
        #expect(h.timers.isEmpty)
        h.started("c")
        h.run(.enable("a"))
        h.run(.restart("a"))
        h.exits("a", .killed(15))
        h.exits("c", .killed(15))
        #expect(!h.fleet.hasProcesses)
        #expect(h.spawning.isEmpty)
        #expect(h.fleet.workers.allSatisfy { $0.state.isSettled })
        #expect(h.violations.isEmpty)
    }

    @Test func earlyTimerIsReArmed() {
        var h = FleetHarness(configuration([definition(delay: 5, delayMax: 5)]))
        h.started()
        h.exits()
        h.advance(1)
        h.run(.timerFired("w"))
        #expect(h.state() == .backoff)
        #expect(h.lastActions == [.scheduleTimer(name: "w", at: .seconds(5))])
    }
}

@Suite struct EnableStateTests {
    @Test func roundTrip() {
        let state = EnableState(intents: [
            "db-sync": EnableIntent(enabled: false, configuredEnabled: true),
            "a@b.c_d": EnableIntent(enabled: true, configuredEnabled: false),
        ])
        let text = state.encoded()
        #expect(text.contains("bgworker-enable-state 1\ndisabled a@b.c_d") == false)
        #expect(text.hasSuffix("bgworker-enable-state 1\nenabled a@b.c_d configured=false\ndisabled db-sync configured=true\n"))
        let decoded = EnableState.decode(text)
        #expect(decoded.state == state)
        #expect(decoded.problem == nil)
        #expect(EnableState.decode("").state == EnableState())
        #expect(EnableState.decode("").problem == nil)
        #expect(EnableState.decode("bgworker-enable-state 1\r\n\r\nenabled x configured=true\r\n").state.intents["x"]?.enabled == true)
    }

    @Test(arguments: [
        ("garbage\n", "line 1: expected 'bgworker-enable-state 1'"),
        ("bgworker-enable-state 2\nenabled a configured=true\n", "line 1: unsupported version '2'"),
        ("bgworker-enable-state 1\nenabled a\n", "line 2: malformed entry 'enabled a'"),
        ("bgworker-enable-state 1\nmaybe a configured=true\n", "line 2: malformed entry 'maybe a configured=true'"),
        ("bgworker-enable-state 1\nenabled a/b configured=true\n", "line 2: malformed entry 'enabled a/b configured=true'"),
        ("bgworker-enable-state 1\nenabled a configured=yes\n", "line 2: malformed entry 'enabled a configured=yes'"),
        ("bgworker-enable-state 1\nenabled a configured=true\ndisabled a configured=true\n", "line 3: worker 'a' listed twice"),
    ])
    func corruptFilesYieldEmpty(text: String, problem: String) {
        let decoded = EnableState.decode(text)
        #expect(decoded.state == EnableState())
        #expect(decoded.problem == problem)
    }

    /// A quoted line is cut and escaped: a line of megabytes or of control bytes stays one short,
    /// printable log line (issue 15).
    @Test func aProblemQuotesAtMost80BytesEscaped() {
        let long = "bgworker-enable-state 1\ndisabled " + String(repeating: "a", count: 1 << 20) + "\n"
        let problem = EnableState.decode(long).problem
        #expect(problem == "line 2: malformed entry 'disabled " + String(repeating: "a", count: 71) + "... (1048585 bytes)'")
        let binary = "bgworker-enable-state 1\nenabled \u{1b}[2J\\ \u{7f}é configured=true\n"
        #expect(EnableState.decode(binary).problem == #"line 2: malformed entry 'enabled \x1b[2J\x5c \x7f\xc3\xa9 configured=true'"#)
        #expect(EnableState.decode("bgworker-enable-state 1\u{0}\n").problem == #"line 1: unsupported version '1\x00'"#)
        #expect(EnableState.decode("  # comment\n\n bgworker-enable-state  1 \nenabled  x configured=true").state.intents["x"]?.enabled == true)
    }
}

// MARK: - [ha] keep-for

/// `on-lost = keep` bounded by `keep-for`: the deadline is an input (the role timer), never a
/// clock the core reads.
@Suite struct KeepForTests {
    /// A primary worker `p`, a secondary `s` and an `any` worker `a` on a primary node, with
    /// `on-lost = keep` and `keep-for`; `p` and `a` run.
    static func primaryNode(keepFor: Double) -> FleetHarness {
        let workers = [definition("p", runOn: .primary), definition("s", runOn: .secondary), definition("a", runOn: .any)]
        var h = FleetHarness(configuration(workers, onLost: .keep, keepFor: keepFor), role: .primary)
        h.started("p")
        h.started("a")
        return h
    }

    static let epsilon = 1e-9

    @Test func roleBackJustBeforeKeepForStopsNothing() {
        var h = Self.primaryNode(keepFor: 2)
        h.run(.roleChanged(.unknown))
        #expect(h.lastActions == [.scheduleRoleTimer(at: .seconds(2))])
        #expect(h.fleet.roleState.inForce == .primary)
        h.advance(2 - Self.epsilon)
        h.fireRoleTimerIfDue()
        #expect(h.state("p") == .running)
        h.run(.roleChanged(.primary))
        #expect(h.lastActions == [.cancelRoleTimer])
        #expect(h.roleTimer == nil)
        h.advance(100)
        #expect(h.state("p") == .running && h.state("a") == .running && h.stopsSent.isEmpty)
        #expect(h.violations.isEmpty)
    }

    @Test func atKeepForUnknownActsAsUnderStop() {
        var h = Self.primaryNode(keepFor: 2)
        h.run(.roleChanged(.unknown))
        h.advance(2)
        h.fireRoleTimerIfDue()
        #expect(h.state("p") == .stopping)
        #expect(h.fleet.status(of: "p")?.reason == "HA role unknown for 2 s (keep-for)")
        #expect(h.state("a") == .running)
        #expect(h.fleet.roleState.inForce == .unknown && h.fleet.roleState.reported == .unknown)
        #expect(h.roleTimer == nil)
        h.exits("p", .killed(15))
        #expect(h.state("p") == .standby)
        // A repeated unknown changes nothing; the role back starts the worker again.
        h.run(.roleChanged(.unknown))
        #expect(h.lastActions.isEmpty)
        h.run(.roleChanged(.primary))
        #expect(h.state("p") == .starting)
        #expect(h.violations.isEmpty)
    }

    @Test func anEarlyTimerIsArmedAgain() {
        var h = Self.primaryNode(keepFor: 2)
        h.run(.roleChanged(.unknown))
        h.advance(1)
        h.run(.roleTimerFired)
        #expect(h.lastActions == [.scheduleRoleTimer(at: .seconds(2))])
        #expect(h.state("p") == .running)
        #expect(h.violations.isEmpty)
    }

    /// A secondary node keeps its secondary workers for keep-for, too.
    @Test func theLastKnownSecondaryRoleIsBoundedAlike() {
        let workers = [definition("p", runOn: .primary), definition("s", runOn: .secondary)]
        var h = FleetHarness(configuration(workers, onLost: .keep, keepFor: 0.5), role: .secondary)
        h.started("s")
        h.run(.roleChanged(.unknown))
        h.advance(0.5)
        h.fireRoleTimerIfDue()
        #expect(h.state("s") == .stopping && h.state("p") == .standby)
        #expect(h.violations.isEmpty)
    }

    /// Each return of a role ends the keep; the next `unknown` starts a new one from its own
    /// time, and repeated `unknown`s do not extend it.
    @Test func roleFlapping() {
        var h = Self.primaryNode(keepFor: 2)
        h.run(.roleChanged(.unknown))               // t 0: deadline 2
        h.advance(1.5)
        h.run(.roleChanged(.primary))               // t 1.5
        h.advance(0.1)
        h.run(.roleChanged(.unknown))               // t 1.6: deadline 3.6
        #expect(h.roleTimer == .seconds(3.6))
        h.advance(0.1)
        h.run(.roleChanged(.unknown))               // t 1.7: no extension
        #expect(h.roleTimer == .seconds(3.6))
        h.advance(1.9 - Self.epsilon)
        h.fireRoleTimerIfDue()
        #expect(h.state("p") == .running)
        h.advance(Self.epsilon)
        h.fireRoleTimerIfDue()
        #expect(h.state("p") == .stopping)
        // Flapping after the expiry: secondary, then unknown again keeps secondary for 2 s.
        h.run(.roleChanged(.secondary))
        h.exits("p", .killed(15))
        #expect(h.state("s") == .starting)
        h.started("s")
        h.run(.roleChanged(.unknown))
        #expect(h.state("s") == .running && h.roleTimer == h.now.advanced(bySeconds: 2))
        #expect(h.stopsSent.isEmpty)
        #expect(h.violations.isEmpty)
    }

    @Test func keepForZeroIsWithoutLimit() {
        var h = Self.primaryNode(keepFor: 0)
        h.run(.roleChanged(.unknown))
        #expect(h.lastActions.isEmpty && h.roleTimer == nil)
        h.advance(1e9)
        h.run(.roleTimerFired)  // a stray timer changes nothing
        #expect(h.state("p") == .running && h.fleet.roleState.inForce == .primary)
        #expect(h.violations.isEmpty)
    }

    /// Before any role was known, `unknown` is in force at once: no keep, no timer.
    @Test func noKeepBeforeAnyRoleWasKnown() {
        var h = FleetHarness(configuration([definition("p")], onLost: .keep, keepFor: 2), role: .unknown)
        h.run(.roleChanged(.unknown))
        #expect(h.roleTimer == nil && h.state("p") == .standby)
        #expect(h.violations.isEmpty)
    }

    /// A reload measures the new keep-for from when the role became unknown: shorter ends the
    /// keep at once, longer moves the deadline, on-lost = stop ends it, 0 removes the bound.
    @Test func reloadChangesTheBound() {
        let workers = [definition("p", runOn: .primary), definition("s", runOn: .secondary), definition("a", runOn: .any)]
        var h = Self.primaryNode(keepFor: 10)
        h.run(.roleChanged(.unknown))
        h.advance(3)
        h.run(.reload(configuration(workers, onLost: .keep, keepFor: 5)))
        #expect(h.roleTimer == .seconds(5) && h.state("p") == .running)
        h.run(.reload(configuration(workers, onLost: .keep, keepFor: 0)))
        #expect(h.roleTimer == nil && h.state("p") == .running)
        h.run(.reload(configuration(workers, onLost: .keep, keepFor: 2)))
        #expect(h.roleTimer == nil && h.state("p") == .stopping)
        h.exits("p", .killed(15))
        h.run(.reload(configuration(workers, onLost: .keep, keepFor: 4)))
        #expect(h.roleTimer == .seconds(4) && h.state("p") == .starting)
        h.started("p")
        h.run(.reload(configuration(workers, onLost: .stop, keepFor: 4)))
        #expect(h.roleTimer == nil && h.state("p") == .stopping)
        #expect(h.violations.isEmpty)
    }
}

// MARK: - Reload that switches the HA source

@Suite struct ReloadHASourceTests {
    static let haManager = HASource.dbus(service: "org.example.HAManager")

    /// From `none` to `dbus`: the role is `unknown` (the new source has not spoken) before any
    /// worker starts, so an added primary worker never gets a spawn, and one that ran under
    /// `standalone` stops.
    @Test func noneToDBusStartsAddedWorkersUnderUnknown() {
        let old = definition("old", runOn: .primary)
        var h = FleetHarness(configuration([old]), role: .standalone)
        h.started("old")
        let added = [definition("new", runOn: .primary), definition("sec", runOn: .secondary), definition("any", runOn: .any)]
        h.run(.reload(configuration([old] + added, source: Self.haManager)))
        #expect(h.fleet.roleState.reported == .unknown)
        let spawned = h.lastActions.compactMap { action -> String? in
            if case .spawn(let name, _) = action { name } else { nil }
        }
        #expect(spawned == ["any"])
        #expect(h.state("new") == .standby)
        #expect(h.state("sec") == .standby)
        #expect(h.state("old") == .stopping)
        h.exits("old", .killed(15))
        #expect(h.state("old") == .standby)
        // The new source's role then applies as usual.
        h.run(.roleChanged(.primary))
        #expect(h.state("new") == .starting && h.state("old") == .starting)
        #expect(h.violations.isEmpty)
    }

    /// Back to `none`: standalone at once, every worker runs, and no HA role is remembered for
    /// a later `keep`.
    @Test func dbusToNoneIsStandaloneAndForgetsTheRole() {
        let workers = [definition("p", runOn: .primary), definition("s", runOn: .secondary)]
        var h = FleetHarness(configuration(workers, onLost: .keep, source: Self.haManager), role: .primary)
        h.started("p")
        h.run(.reload(configuration(workers, onLost: .keep)))
        #expect(h.fleet.roleState.reported == .standalone && h.state("s") == .starting)
        h.started("s")
        h.run(.reload(configuration(workers, onLost: .keep, source: Self.haManager)))
        #expect(h.fleet.roleState.inForce == .unknown)
        #expect(h.state("p") == .stopping && h.state("s") == .stopping)
        #expect(h.violations.isEmpty)
    }
}

@Suite struct FleetNameIdentityTests {
    /// U+212A KELVIN SIGN is canonically equivalent to "K": a bus request naming it must not reach
    /// worker "K" (names compare by code points, as the configuration's keys do).
    @Test func aCanonicallyEquivalentNameIsNoWorker() {
        var h = FleetHarness(configuration([definition("K")]), role: .primary)
        h.started("K")
        #expect(h.fleet.status(of: "\u{212A}") == nil)
        #expect(throws: FleetError.noSuchWorker("\u{212A}")) { try h.send(.restart("\u{212A}")) }
        #expect(throws: FleetError.noSuchWorker("\u{212A}")) { try h.send(.disable("\u{212A}")) }
        #expect(h.state("K") == .running)
    }
}

// MARK: - Emergency stop and per-worker log levels

@Suite struct StopStartTests {
    @Test func stopOfRunningStopsAndStaysStoppedThroughRoleChanges() {
        var h = FleetHarness(configuration([definition()]), role: .primary)
        let pid = h.started()
        let actions = h.run(.stop("w"))
        #expect(actions.contains(.stop(name: "w", pid: pid)))
        #expect(!actions.contains { if case .persist = $0 { true } else { false } }, "Stop is never persisted")
        h.exits("w", .killed(15))
        #expect(h.state() == .stopped)
        #expect(stateChanges(h.lastActions) == ["w stopped: stop requested"])
        h.run(.roleChanged(.secondary))
        h.run(.roleChanged(.primary))
        h.run(.reload(configuration([definition(exec: ["/bin/changed"])])))
        #expect(h.state() == .stopped)
        #expect(h.spawning.isEmpty)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func stopOfBackoffCancelsItsTimer() {
        var h = FleetHarness(configuration([definition()]))
        h.started()
        h.exits()
        #expect(h.timers["w"] != nil)
        h.run(.stop("w"))
        #expect(h.state() == .stopped)
        #expect(h.timers.isEmpty)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func startClearsFailedAndItsRestartCounter() throws {
        var h = FleetHarness(configuration([definition(delay: 0, burst: 3)]))
        for _ in 0..<3 {
            h.started()
            h.exits()
        }
        #expect(h.state() == .failed)
        #expect(h.fleet.status(of: "w")?.restarts == 2)
        try h.send(.start("w"))
        #expect(h.state() == .starting)
        #expect(h.fleet.status(of: "w")?.restarts == 0)
        h.started()
        // A fresh history: one exit does not fail it again.
        h.exits()
        #expect(h.state() == .starting)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func disabledStaysDisabled() {
        var h = FleetHarness(configuration([definition(enabled: false)]))
        #expect(h.run(.stop("w")) == [])
        #expect(throws: FleetError.disabled("w")) { try h.send(.start("w")) }
        #expect(h.state() == .disabled)
    }

    @Test func enableRestartAndStartBringAStoppedWorkerBack() throws {
        for event in [FleetEvent.enable("w"), .restart("w"), .start("w")] {
            var h = FleetHarness(configuration([definition()]))
            h.started()
            h.run(.stop("w"))
            h.exits()
            try h.send(event)
            #expect(h.state() == .starting, "\(event)")
            #expect(h.violations.isEmpty, "\(event): \(h.violations)")
        }
    }

    @Test func startWhileStoppingWaitsForTheExit() throws {
        var h = FleetHarness(configuration([definition()]))
        h.started()
        h.run(.stop("w"))
        try h.send(.start("w"))
        #expect(h.state() == .stopping)
        #expect(h.spawning.isEmpty)
        h.exits()
        #expect(h.state() == .starting)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func disableForgetsTheStop() throws {
        var h = FleetHarness(configuration([definition()]))
        h.started()
        h.run(.stop("w"))
        h.exits()
        h.run(.disable("w"))
        #expect(h.state() == .disabled)
        h.run(.enable("w"))
        #expect(h.state() == .starting)
    }

    @Test func stopInStandbyKeepsItFromStartingWhenTheRoleAllows() {
        var h = FleetHarness(configuration([definition()]), role: .secondary)
        h.run(.stop("w"))
        #expect(h.state() == .stopped)
        h.run(.roleChanged(.primary))
        #expect(h.state() == .stopped)
        #expect(h.spawning.isEmpty)
    }

    @Test func aNewFleetForgetsTheStop() {
        // Stop is not persisted: what a daemon restart builds from the same state file runs it.
        var h = FleetHarness(configuration([definition()]))
        h.started()
        h.run(.stop("w"))
        h.exits()
        let restarted = FleetHarness(configuration([definition()]), enableState: h.persisted ?? EnableState())
        #expect(restarted.state() == .starting)
    }
}

@Suite struct WorkerLogLevelTests {
    private func levels(_ actions: [FleetAction]) -> [String] {
        actions.flatMap { action -> [String] in
            guard case .propertiesChanged(let name, let properties) = action else { return [] }
            return properties.compactMap {
                switch $0 {
                case .logLevel(let level): "\(name) own \(level?.rawValue ?? "")"
                case .effectiveLogLevel(let level): "\(name) effective \(level.rawValue)"
                default: nil
                }
            }
        }
    }

    @Test func ownLevelOverridesAndClearFollowsTheManager() throws {
        var h = FleetHarness(configuration([definition("a"), definition("b")]))
        #expect(h.fleet.status(of: "a")?.effectiveLogLevel == .info)
        #expect(levels(try h.send(.workerLogLevel("a", .debug))) == ["a own debug", "a effective debug"])
        // The manager's change does not override a worker's own level.
        #expect(levels(h.run(.managerLogLevel(.warning))) == ["b effective warning"])
        #expect(h.fleet.status(of: "a")?.effectiveLogLevel == .debug)
        #expect(levels(try h.send(.workerLogLevel("a", nil))) == ["a own ", "a effective warning"])
        // Setting the level already in force changes the own level only.
        #expect(levels(try h.send(.workerLogLevel("b", .warning))) == ["b own warning"])
        #expect(levels(h.run(.managerLogLevel(.warning))) == [])
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func configuredLevelAndReloads() {
        var h = FleetHarness(configuration([definition("a", logLevel: .error)]))
        #expect(h.fleet.status(of: "a")?.logLevel == .error)
        #expect(h.fleet.status(of: "a")?.effectiveLogLevel == .error)
        _ = try? h.send(.workerLogLevel("a", .trace))
        // An unchanged key keeps the bus's level; a changed one replaces it, without a restart.
        #expect(levels(h.run(.reload(configuration([definition("a", logLevel: .error)])))) == [])
        let actions = h.run(.reload(configuration([definition("a", logLevel: .notice)])))
        #expect(levels(actions) == ["a own notice", "a effective notice"])
        #expect(!actions.contains { if case .spawn = $0 { true } else { false } })
        // A changed [daemon] log-level replaces the manager's level set over the bus.
        h.run(.managerLogLevel(.critical))
        var changed = configuration([definition("a"), definition("b")])
        changed.daemon.logLevel = .debug
        #expect(levels(h.run(.reload(changed))) == ["a own ", "a effective debug"])
        #expect(h.fleet.status(of: "b")?.effectiveLogLevel == .debug)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }
}
