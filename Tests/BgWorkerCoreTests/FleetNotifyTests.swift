import Testing

@testable import BgWorkerCore

/// `ready = "notify"` in the fleet: `starting` until READY=1, RELOADING=1 and STOPPING=1, STATUS=.
@Suite struct FleetNotifyTests {
    func notifyDefinition(_ name: String = "w") -> WorkerDefinition {
        var worker = definition(name)
        worker.ready = .notify
        return worker
    }

    @Test func aNotifyWorkerIsStartingUntilReady() {
        var h = FleetHarness(configuration([notifyDefinition()]))
        #expect(h.state() == .starting)
        let pid = h.started()
        #expect(h.state() == .starting)
        #expect(h.fleet.status(of: "w")?.pid == pid)
        h.ready()
        #expect(h.state() == .running)
        #expect(h.fleet.status(of: "w")?.reason == "ready (READY=1)")
        #expect(h.violations.isEmpty)
    }

    @Test func anExecWorkerIgnoresReady() {
        var h = FleetHarness(configuration([definition()]))
        h.started()
        #expect(h.state() == .running)
        let actions = h.run(.processReady("w", pid: h.live["w"]!))
        #expect(actions.isEmpty)
    }

    @Test func readyFromAnotherPidOrAfterAStopIsIgnored() throws {
        var h = FleetHarness(configuration([notifyDefinition()]))
        let pid = h.started()
        #expect(h.run(.processReady("w", pid: pid + 1)).isEmpty)
        #expect(h.state() == .starting)
        try h.send(.stop("w"))
        #expect(h.state() == .stopping)
        #expect(h.run(.processReady("w", pid: pid)).isEmpty)
        #expect(h.state() == .stopping)
        h.exits("w", .killed(15))
        #expect(h.state() == .stopped)
        #expect(h.violations.isEmpty)
    }

    @Test func reloadingGoesBackToStartingUntilReady() {
        var h = FleetHarness(configuration([notifyDefinition()]))
        let pid = h.started()
        h.ready()
        h.run(.processReloading("w", pid: pid))
        #expect(h.state() == .starting)
        #expect(h.fleet.status(of: "w")?.reason == "reloading (RELOADING=1)")
        h.ready()
        #expect(h.state() == .running)
        #expect(h.fleet.status(of: "w")?.reason == "reloaded (READY=1)")
        #expect(h.violations.isEmpty)
    }

    /// RELOADING=1 makes a running worker `starting` with no timeout until its READY=1, which
    /// may never come. Nothing the daemon asked for is under way: a repeated Enable or a Start
    /// (no-ops on a running worker) must reply at once. They waited for READY=1 (the clients'
    /// NoReply after their timeout, found by scripts/adversarial/notify.py).
    @Test func aWorkerReloadingByItselfIsSettled() throws {
        var h = FleetHarness(configuration([notifyDefinition()]))
        let pid = h.started()
        #expect(!h.fleet.isSettled("w"), "its first start waits for READY=1")
        h.ready()
        h.run(.processReloading("w", pid: pid))
        #expect(h.state() == .starting)
        #expect(h.fleet.isSettled("w"))
        try h.send(.stop("w"))
        #expect(h.state() == .stopping)
        #expect(!h.fleet.isSettled("w"), "a Stop of a reloading worker waits for its exit")
        h.exits("w", .killed(15))
        #expect(h.fleet.isSettled("w"))
        #expect(h.violations.isEmpty)
    }

    @Test func stoppingByItselfThenExitingIsUnexpected() {
        var h = FleetHarness(configuration([notifyDefinition()]))
        let pid = h.started()
        h.ready()
        h.run(.processStopping("w", pid: pid))
        #expect(h.state() == .stopping)
        h.exits("w", .exited(0))
        #expect(h.state() == .backoff)
        #expect(h.violations.isEmpty)
    }

    @Test func watchdogAndStartTimeoutExitsAreUnexpectedWithTheirLastExit() {
        var h = FleetHarness(configuration([notifyDefinition()]))
        h.started()
        h.exits("w", .startTimeout)
        #expect(h.state() == .backoff)
        #expect(h.fleet.status(of: "w")?.lastExit == .startTimeout)
        #expect(h.fleet.status(of: "w")?.reason == "no READY=1 within start-timeout")
        h.advance(1)
        h.fireDueTimers()
        h.started()
        h.ready()
        h.exits("w", .watchdog)
        #expect(h.fleet.status(of: "w")?.lastExit?.description == "watchdog")
        #expect(h.violations.isEmpty)
    }

    @Test func statusTextIsKeptUntilTheNextSpawn() throws {
        var h = FleetHarness(configuration([notifyDefinition()]))
        let pid = h.started()
        let actions = h.run(.processStatus("w", pid: pid, text: "connecting"))
        #expect(actions == [.propertiesChanged(name: "w", [.statusText("connecting")])])
        #expect(h.run(.processStatus("w", pid: pid, text: "connecting")).isEmpty)
        #expect(h.run(.processStatus("w", pid: pid + 1, text: "spoofed")).isEmpty)
        h.exits("w", .exited(1))
        #expect(h.fleet.status(of: "w")?.statusText == "connecting")
        h.advance(1)
        h.fireDueTimers()
        #expect(h.fleet.status(of: "w")?.statusText == "")
        #expect(h.violations.isEmpty)
    }
}
