import Testing

@testable import BgWorkerCore

// Maintenance mode (issue 10): while an inhibitor is held, workers without
// `run-during-maintenance` stop and wait in `standby`; when the last one is gone they start again.

private let apt = MaintenanceHold(who: "apt", why: "upgrade")
private let dpkg = MaintenanceHold(who: "dpkg", why: "configure")

extension FleetHarness {
    /// Answers every start, delivers the exit of every stopped process and fires every timer (an
    /// hour later), until nothing is pending: where the worker ends up when nothing else happens.
    mutating func settle() {
        for _ in 0..<50 {
            var progressed = false
            for name in spawning.sorted() {
                started(name)
                progressed = true
            }
            for name in stopsSent.keys.sorted() where live[name] != nil {
                exits(name, .killed(15))
                progressed = true
            }
            if !timers.isEmpty {
                advance(3600)
                fireDueTimers()
                progressed = true
            }
            if !progressed { return }
        }
        violations.append("does not settle")
    }
}

@Suite struct MaintenanceBeginsTests {
    /// The state right after maintenance begins, and once every process that must go is gone.
    private static let expected: [WorkerState: (now: WorkerState, settled: WorkerState)] = [
        .disabled: (.disabled, .disabled),
        .standby: (.standby, .standby),
        .starting: (.stopping, .standby),
        .running: (.stopping, .standby),
        .stopping: (.stopping, .standby),
        .backoff: (.standby, .standby),
        .failed: (.failed, .failed),
        .stopped: (.stopped, .stopped),
    ]

    @Test(arguments: WorkerState.allCases)
    func fromEveryState(state: WorkerState) throws {
        var h = harness(in: state)
        let pid = h.live["w"]
        let actions = h.run(.maintenance(apt))
        let expected = try #require(Self.expected[state])
        #expect(h.state() == expected.now, "\(state)")
        if state == .running, let pid {
            #expect(actions.contains(.stop(name: "w", pid: pid)), "the stop path of Disable/Stop (stop-timeout, SIGKILL)")
            #expect(stateChanges(actions) == ["w stopping: maintenance: apt: upgrade"])
        }
        if state == .backoff {
            #expect(actions.contains(.cancelTimer(name: "w")))
            #expect(stateChanges(actions) == ["w standby: maintenance: apt: upgrade"])
        }
        #expect(h.fleet.maintenanceSettled == expected.now.isSettled, "\(state)")
        h.settle()
        #expect(h.state() == expected.settled, "\(state)")
        #expect(h.fleet.maintenanceSettled)
        #expect(h.live.isEmpty && h.spawning.isEmpty, "\(state)")
        // (The stopping worker was stopped by the role, which keeps its reason.)
        if expected.settled == .standby && state != .standby && state != .stopping {
            #expect(h.fleet.status(of: "w")?.reason == "maintenance: apt: upgrade", "\(state)")
        }
        #expect(h.violations.isEmpty, "\(state): \(h.violations)")
    }

    /// `run-during-maintenance = true`: maintenance changes nothing, in any state.
    @Test(arguments: WorkerState.allCases)
    func exemptWorkersAreUntouched(state: WorkerState) {
        var h = harness(in: state)
        var exempt = h.fleet.configuration
        exempt.workers[0].runDuringMaintenance = true
        h.run(.reload(exempt))
        let before = h.fleet.status(of: "w")
        #expect(h.run(.maintenance(apt)) == [])
        #expect(h.run(.maintenance(nil)) == [])
        #expect(h.fleet.status(of: "w") == before)
        #expect(!h.fleet.isHeldByMaintenance("w"))
        #expect(h.violations.isEmpty, "\(state): \(h.violations)")
    }

    @Test func repeatsAndAnotherHolderChangeNothingNow() {
        var h = FleetHarness(configuration([definition()]))
        h.started()
        #expect(!h.run(.maintenance(apt)).isEmpty)
        #expect(h.run(.maintenance(apt)) == [])
        #expect(h.run(.maintenance(dpkg)) == [])
        #expect(h.fleet.maintenance == dpkg)
        // The worker still stopping rests with the holder in force when its exit comes.
        h.exits("w", .killed(15))
        #expect(stateChanges(h.lastActions) == ["w standby: maintenance: dpkg: configure"])
        #expect(h.run(.maintenance(nil)).contains { if case .spawn = $0 { true } else { false } })
        #expect(stateChanges(h.lastActions) == ["w starting: maintenance ended"])
        #expect(h.run(.maintenance(nil)) == [])
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func onlyTheHeldWorkersStopAndOnlyTheyCountForSettled() {
        var h = FleetHarness(configuration([definition("a"), definition("b", duringMaintenance: true), definition("c")]))
        for name in ["a", "b", "c"] { h.started(name) }
        #expect(h.fleet.maintenanceSettled, "outside maintenance there is nothing to wait for")
        let actions = h.run(.maintenance(apt))
        #expect(stateChanges(actions) == ["a stopping: maintenance: apt: upgrade", "c stopping: maintenance: apt: upgrade"])
        #expect(!h.fleet.maintenanceSettled)
        h.exits("a", .killed(15))
        #expect(!h.fleet.maintenanceSettled)
        h.exits("c", .killed(15))
        #expect(h.fleet.maintenanceSettled, "b, exempt, still runs")
        #expect(h.state("b") == .running)
        // The exempt worker keeps its restart policy during maintenance.
        h.exits("b")
        #expect(h.state("b") == .backoff)
        h.advance(5)
        h.fireDueTimers()
        #expect(h.state("b") == .starting)
        #expect(h.fleet.maintenanceSettled)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func aStartInFlightIsStoppedOnceItHasAPid() {
        var h = FleetHarness(configuration([definition()]))
        h.run(.maintenance(apt))
        #expect(h.state() == .stopping)
        #expect(!h.fleet.maintenanceSettled, "a start in flight may still become a process")
        let pid = h.started()
        #expect(h.lastActions.contains(.stop(name: "w", pid: pid)))
        h.exits("w", .killed(15))
        #expect(h.state() == .standby)
        #expect(h.fleet.maintenanceSettled)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func aFailedStartInFlightRestsInStandby() {
        var h = FleetHarness(configuration([definition()]))
        h.run(.maintenance(apt))
        h.failsToStart()
        #expect(h.state() == .standby)
        #expect(h.fleet.status(of: "w")?.restarts == 0, "not counted as an unexpected end")
        #expect(h.violations.isEmpty, "\(h.violations)")
    }
}

@Suite struct MaintenanceEndsTests {
    @Test func everyWorkerTheRulesAllowStartsAgain() throws {
        var h = FleetHarness(
            configuration([
                definition("a"), definition("b", runOn: .secondary), definition("c", enabled: false), definition("d"),
                definition("e", burst: 1),
            ]), role: .primary)
        for name in ["a", "d", "e"] { h.started(name) }
        h.exits("e")  // failed
        try h.send(.stop("d"))
        h.exits("d", .killed(15))
        h.run(.maintenance(apt))
        h.exits("a", .killed(15))
        #expect(h.fleet.workers.map(\.state) == [.standby, .standby, .disabled, .stopped, .failed])
        let actions = h.run(.maintenance(nil))
        #expect(stateChanges(actions) == ["a starting: maintenance ended"])
        #expect(h.fleet.workers.map(\.state) == [.starting, .standby, .disabled, .stopped, .failed])
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    /// Never two processes: a worker still stopping when maintenance ends starts after its exit.
    @Test func whileStillStoppingStartsOnlyAfterTheExit() {
        var h = FleetHarness(configuration([definition()]))
        h.started()
        h.run(.maintenance(apt))
        #expect(h.run(.maintenance(nil)).allSatisfy { if case .spawn = $0 { false } else { true } })
        #expect(h.state() == .stopping)
        h.run(.maintenance(dpkg))
        h.run(.maintenance(nil))
        #expect(h.spawning.isEmpty)
        h.exits("w", .killed(15))
        #expect(h.state() == .starting)
        #expect(h.spawning == ["w"])
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func whileAStartIsInFlightTheStartIsStoppedAndThenRunAgain() {
        var h = FleetHarness(configuration([definition()]))
        h.run(.maintenance(apt))
        h.run(.maintenance(nil))
        #expect(h.state() == .stopping)
        let pid = h.started()
        #expect(h.lastActions.contains(.stop(name: "w", pid: pid)))
        h.exits("w", .killed(15))
        #expect(h.state() == .starting)
        h.started()
        #expect(h.state() == .running)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func endingAgainDuringTheStopRestsWhenTheExitComesUnderANewHold() {
        var h = FleetHarness(configuration([definition()]))
        h.started()
        h.run(.maintenance(apt))
        h.run(.maintenance(nil))
        h.run(.maintenance(dpkg))
        h.exits("w", .killed(15))
        #expect(h.state() == .standby)
        #expect(h.fleet.status(of: "w")?.reason == "maintenance: dpkg: configure")
        #expect(h.spawning.isEmpty)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func aWorkerThatWasInBackoffStartsAtOnce() {
        var h = FleetHarness(configuration([definition(delay: 30)]))
        h.started()
        h.exits()
        h.run(.maintenance(apt))
        #expect(h.timers.isEmpty)
        h.run(.maintenance(nil))
        #expect(h.state() == .starting)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }
}

@Suite struct EventsDuringMaintenanceTests {
    /// From every state, every event during maintenance: no held worker spawns (the harness
    /// checks every action), everything that must go goes, and once maintenance ends the worker
    /// ends where it would have ended without maintenance.
    @Test(arguments: WorkerState.allCases)
    func everyEventFromEveryStateLeavesNoTrace(state: WorkerState) {
        for event in TableEvent.allCases {
            var plain = harness(in: state)
            let plainError = apply(event, to: &plain)
            plain.settle()

            var h = harness(in: state)
            h.run(.maintenance(apt))
            let error = apply(event, to: &h)
            #expect(error == plainError, "\(state) + \(event)")
            h.settle()
            let during = h.state()
            #expect(during == nil || [.disabled, .standby, .failed, .stopped].contains(during!), "\(state) + \(event): \(String(describing: during))")
            #expect(h.fleet.maintenanceSettled, "\(state) + \(event)")
            #expect(h.live.isEmpty && h.spawning.isEmpty, "\(state) + \(event)")
            h.run(.maintenance(nil))
            h.settle()
            #expect(h.state() == plain.state(), "\(state) + \(event)")
            #expect(h.violations.isEmpty, "\(state) + \(event): \(h.violations)")
            #expect(plain.violations.isEmpty, "\(state) + \(event): \(plain.violations)")
        }
    }

    @Test func roleChangesDoNotStartAHeldWorker() {
        var h = FleetHarness(configuration([definition("p"), definition("s", runOn: .secondary)]), role: .secondary)
        h.started("s")
        h.run(.maintenance(apt))
        h.exits("s", .killed(15))
        for role in [HARole.primary, .unknown, .secondary, .standalone, .primary] {
            h.run(.roleChanged(role))
            #expect(h.spawning.isEmpty, "\(role)")
            #expect(h.fleet.workers.allSatisfy { $0.state == .standby }, "\(role)")
        }
        h.run(.maintenance(nil))
        #expect(h.state("p") == .starting)
        #expect(h.state("s") == .standby)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func roleChangesMoveExemptWorkersAsUsual() {
        var h = FleetHarness(configuration([definition(duringMaintenance: true)]), role: .primary)
        h.started()
        h.run(.maintenance(apt))
        h.run(.roleChanged(.secondary))
        #expect(stateChanges(h.lastActions) == ["w stopping: HA role secondary"])
        h.exits("w", .killed(15))
        #expect(stateChanges(h.lastActions) == ["w standby: HA role secondary"])
        h.run(.roleChanged(.primary))
        #expect(h.state() == .starting)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func enablePersistsTheIntentAndWaits() throws {
        var h = FleetHarness(configuration([definition(enabled: false)]))
        h.run(.maintenance(apt))
        let actions = try h.send(.enable("w"))
        #expect(actions.contains(.persist(EnableState(intents: ["w": EnableIntent(enabled: true, configuredEnabled: false)]))))
        #expect(stateChanges(actions) == ["w standby: maintenance: apt: upgrade"])
        #expect(h.fleet.isSettled("w"), "Enable replies at once: the worker is in standby")
        h.run(.maintenance(nil))
        #expect(h.state() == .starting)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func startRestartAndEnableClearStoppedAndFailedAndWaitInStandby() throws {
        for event in [FleetEvent.start("w"), .restart("w"), .enable("w")] {
            for from in [WorkerState.stopped, .failed] {
                var h = harness(in: from)
                h.run(.maintenance(apt))
                try h.send(event)
                #expect(h.state() == .standby, "\(from) + \(event)")
                #expect(h.fleet.status(of: "w")?.reason == "maintenance: apt: upgrade", "\(from) + \(event)")
                #expect(h.fleet.status(of: "w")?.restarts == 0)
                #expect(h.fleet.isSettled("w"))
                h.run(.maintenance(nil))
                #expect(h.state() == .starting, "\(from) + \(event)")
                #expect(h.violations.isEmpty, "\(from) + \(event): \(h.violations)")
            }
        }
    }

    @Test func startOfAHeldWorkerIsANoOpAndDisabledStillThrows() throws {
        var h = FleetHarness(configuration([definition(), definition("off", enabled: false)]))
        h.run(.maintenance(apt))
        h.failsToStart()
        #expect(try h.send(.start("w")) == [])
        #expect(try h.send(.restart("w")).allSatisfy { if case .spawn = $0 { false } else { true } })
        #expect(throws: FleetError.disabled("off")) { try h.send(.start("off")) }
        #expect(throws: FleetError.disabled("off")) { try h.send(.restart("off")) }
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func stopAndDisableDuringMaintenanceOutlastIt() throws {
        var h = FleetHarness(configuration([definition("a"), definition("b")]))
        h.started("a")
        h.started("b")
        h.run(.maintenance(apt))
        try h.send(.stop("a"))
        try h.send(.disable("b"))
        h.settle()
        #expect(h.state("a") == .stopped)
        #expect(h.state("b") == .disabled)
        h.run(.maintenance(nil))
        #expect(h.state("a") == .stopped)
        #expect(h.state("b") == .disabled)
        #expect(h.spawning.isEmpty)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func restartOfAStoppingHeldWorkerDoesNotStartItAfterTheExit() throws {
        var h = FleetHarness(configuration([definition()]))
        h.started()
        h.run(.maintenance(apt))
        try h.send(.restart("w"))
        #expect(h.state() == .stopping)
        h.exits("w", .killed(15))
        #expect(h.state() == .standby)
        #expect(h.spawning.isEmpty)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func shutdownDuringMaintenanceStartsNothingWhenItEnds() {
        var h = FleetHarness(configuration([definition("a"), definition("b", duringMaintenance: true)]))
        h.started("a")
        h.started("b")
        h.run(.maintenance(apt))
        h.run(.shutdown)
        h.settle()
        #expect(!h.fleet.hasProcesses)
        h.run(.maintenance(nil))
        #expect(h.spawning.isEmpty)
        #expect(h.fleet.workers.allSatisfy { $0.state == .standby })
        #expect(h.violations.isEmpty, "\(h.violations)")
    }
}

@Suite struct ReloadDuringMaintenanceTests {
    @Test func anAddedWorkerWaitsInStandbyAndAnExemptOneStarts() {
        var h = FleetHarness(configuration([definition("a")]))
        h.started("a")
        h.run(.maintenance(apt))
        h.settle()
        let actions = h.run(.reload(configuration([definition("a"), definition("b"), definition("c", duringMaintenance: true)])))
        #expect(stateChanges(actions) == ["c starting: added"])
        #expect(actions.contains { if case .workerAdded(let b) = $0 { b.name == "b" && b.state == .standby && b.reason == apt.reason } else { false } })
        #expect(h.spawning == ["c"])
        h.run(.maintenance(nil))
        #expect(h.state("a") == .starting)
        #expect(h.state("b") == .starting)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func aRemovedWorkerGoesAndCountsUntilItsProcessIsGone() {
        var h = FleetHarness(configuration([definition("a"), definition("b")]))
        h.started("a")
        h.started("b")
        h.run(.maintenance(apt))
        h.exits("a", .killed(15))
        h.run(.reload(configuration([definition("a")])))
        #expect(h.state("b") == .stopping)
        #expect(!h.fleet.maintenanceSettled)
        h.exits("b", .killed(15))
        #expect(h.removed == ["b"])
        #expect(h.fleet.maintenanceSettled)
        h.run(.reload(configuration([])))
        #expect(h.removed == ["a", "b"])
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func aChangedDefinitionDoesNotStartAHeldWorker() {
        var h = FleetHarness(configuration([definition()]))
        h.started()
        h.run(.maintenance(apt))
        h.run(.reload(configuration([definition(exec: ["/bin/new"])])))
        #expect(h.state() == .stopping)
        h.exits("w", .killed(15))
        #expect(h.state() == .standby)
        h.run(.reload(configuration([definition(exec: ["/bin/newer"])])))
        #expect(h.spawning.isEmpty)
        h.run(.maintenance(nil))
        guard case .spawn(_, let spawned)? = h.lastActions.first(where: { if case .spawn = $0 { true } else { false } }) else {
            Issue.record("no spawn after maintenance: \(h.lastActions)")
            return
        }
        #expect(spawned.exec == ["/bin/newer"])
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func flippingRunDuringMaintenanceAppliesAtOnceWithoutARestart() {
        var h = FleetHarness(configuration([definition()]))
        h.run(.maintenance(apt))
        h.failsToStart()
        #expect(h.state() == .standby)
        // false → true: it starts now.
        h.run(.reload(configuration([definition(duringMaintenance: true)])))
        #expect(stateChanges(h.lastActions) == ["w starting: configuration changed"])
        let pid = h.started()
        // Unchanged otherwise: no restart.
        h.run(.reload(configuration([definition(duringMaintenance: true)])))
        #expect(h.lastActions.isEmpty)
        // true → false: it stops now, for maintenance.
        h.run(.reload(configuration([definition()])))
        #expect(h.lastActions.contains(.stop(name: "w", pid: pid)))
        #expect(stateChanges(h.lastActions) == ["w stopping: maintenance: apt: upgrade"])
        h.exits("w", .killed(15))
        #expect(stateChanges(h.lastActions) == ["w standby: maintenance: apt: upgrade"])
        #expect(h.fleet.maintenanceSettled)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func flippingItOutsideMaintenanceChangesNothing() {
        var h = FleetHarness(configuration([definition()]))
        h.started()
        #expect(h.run(.reload(configuration([definition(duringMaintenance: true)]))) == [])
        #expect(h.run(.reload(configuration([definition()]))) == [])
        #expect(h.state() == .running)
    }

    @Test func aFlipWhileStoppingForMaintenanceStartsAfterTheExit() {
        var h = FleetHarness(configuration([definition()]))
        h.started()
        h.run(.maintenance(apt))
        h.run(.reload(configuration([definition(duringMaintenance: true)])))
        #expect(h.state() == .stopping)
        #expect(h.spawning.isEmpty)
        #expect(h.fleet.maintenanceSettled, "exempt now: Inhibit need not wait for it")
        h.exits("w", .killed(15))
        #expect(h.state() == .starting)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }
}

@Suite struct MaintenanceLifecycleTests {
    @Test func heldBeforeStartSpawnsOnlyExemptWorkersAndStopsAdoptedOnes() {
        var h = FleetHarness(
            configuration([definition("a"), definition("b", duringMaintenance: true), definition("c")]), start: false)
        h.run(.maintenance(apt))
        #expect(h.lastActions.isEmpty)
        h.start(adopted: ["c": 42])
        #expect(h.spawning == ["b"])
        #expect(h.state("a") == .standby)
        #expect(h.state("c") == .stopping)
        #expect(h.lastActions.contains(.stop(name: "c", pid: 42)))
        h.exits("c", .killed(15))
        #expect(h.state("c") == .standby)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func queriesForTheDaemon() {
        var h = FleetHarness(configuration([definition("a"), definition("b", duringMaintenance: true)]))
        #expect(h.fleet.maintenance == nil)
        #expect(!h.fleet.isHeldByMaintenance("a"))
        h.run(.maintenance(apt))
        #expect(h.fleet.maintenance == apt)
        #expect(h.fleet.isHeldByMaintenance("a"))
        #expect(!h.fleet.isHeldByMaintenance("b"))
        #expect(!h.fleet.isHeldByMaintenance("nope"))
        #expect(!h.fleet.shouldRun("a"))
        #expect(h.fleet.shouldRun("b"))
        #expect(apt.reason == "maintenance: apt: upgrade")
    }
}
