@testable import BgWorkerCore
import Testing

/// `[ha] lease` (source `pacemaker`): a role set with SetHARole lasts `lease` seconds unless set
/// again, then it is `unknown` and `on-lost` applies. The fleet's one role timer carries it.
@Suite struct LeaseTests {
    static let workers = [definition("p", runOn: .primary), definition("s", runOn: .secondary), definition("a", runOn: .any)]

    static func pacemaker(lease: Double = 5, onLost: OnLost = .stop, keepFor: Double = 0) -> Configuration {
        Configuration(ha: HASettings(source: .pacemaker, onLost: onLost, keepFor: keepFor, lease: lease), workers: workers)
    }

    /// A node the cluster made primary at t 0: `p` and `a` run.
    static func primaryNode(lease: Double = 5, onLost: OnLost = .stop, keepFor: Double = 0) -> FleetHarness {
        var h = FleetHarness(pacemaker(lease: lease, onLost: onLost, keepFor: keepFor), role: HASource.pacemaker.initialRole)
        h.started("a")
        h.run(.roleChanged(.primary))
        h.started("p")
        return h
    }

    static let epsilon = 1e-9

    @Test func unknownUntilSetThenLeased() {
        var h = FleetHarness(Self.pacemaker(), role: HASource.pacemaker.initialRole)
        #expect(h.fleet.roleState.reported == .unknown && h.roleTimer == nil)
        #expect(h.state("p") == .standby && h.state("s") == .standby && h.state("a") == .starting)
        h.advance(1)
        h.run(.roleChanged(.secondary))
        #expect(h.state("s") == .starting && h.roleTimer == .seconds(6))
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func aRenewalMovesTheDeadlineAndStopsNothing() {
        var h = Self.primaryNode()
        #expect(h.roleTimer == .seconds(5))
        for _ in 0..<10 {
            h.advance(5 - Self.epsilon)
            h.fireRoleTimerIfDue()
            h.run(.roleChanged(.primary))
            #expect(h.lastActions == [.scheduleRoleTimer(at: h.now.advanced(bySeconds: 5))])
        }
        #expect(h.state("p") == .running && h.stopsSent.isEmpty)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func atTheLeaseEndTheRoleIsUnknownAndPrimaryWorkersStop() {
        var h = Self.primaryNode()
        h.advance(5)
        h.fireRoleTimerIfDue()
        #expect(h.fleet.roleState.reported == .unknown && h.fleet.roleState.leaseExpired)
        #expect(h.state("p") == .stopping && h.state("a") == .running)
        #expect(h.fleet.status(of: "p")?.reason == "HA role unknown (lease of 5 s ran out)")
        #expect(h.roleTimer == nil)
        h.exits("p", .killed(15))
        #expect(h.state("p") == .standby)
        // The cluster sets the role again (recovery): back to work, with a new lease.
        h.run(.roleChanged(.primary))
        #expect(h.state("p") == .starting && !h.fleet.roleState.leaseExpired && h.roleTimer == h.now.advanced(bySeconds: 5))
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func aSecondaryLeaseEndsAlike() {
        var h = FleetHarness(Self.pacemaker(lease: 0.5), role: .unknown)
        h.run(.roleChanged(.secondary))
        h.started("s")
        h.started("a")
        h.advance(0.5)
        h.fireRoleTimerIfDue()
        #expect(h.state("s") == .stopping && h.state("a") == .running)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    @Test func anEarlyTimerIsArmedAgain() {
        var h = Self.primaryNode()
        h.advance(4)
        h.run(.roleTimerFired)
        #expect(h.lastActions == [.scheduleRoleTimer(at: .seconds(5))])
        #expect(h.fleet.roleState.reported == .primary && h.state("p") == .running)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    /// `stop` of the agent sets `unknown`: no lease, no timer.
    @Test func unknownSetByTheClusterEndsTheLease() {
        var h = Self.primaryNode()
        h.advance(1)
        h.run(.roleChanged(.unknown))
        #expect(h.roleTimer == nil && h.fleet.roleState.leaseDeadline == nil)
        #expect(h.state("p") == .stopping)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    /// Under `on-lost = keep`, the expired lease is a lost role like any other: the last role
    /// stays in force for `keep-for`, counted from the lease's end.
    @Test func onLostKeepCountsKeepForFromTheLeaseEnd() {
        var h = Self.primaryNode(onLost: .keep, keepFor: 2)
        h.advance(5.5)  // a late timer: the keep still starts at 5
        h.fireRoleTimerIfDue()
        #expect(h.fleet.roleState.reported == .unknown && h.fleet.roleState.inForce == .primary)
        #expect(h.roleTimer == .seconds(7) && h.state("p") == .running)
        h.advance(1.5)
        h.fireRoleTimerIfDue()
        #expect(h.state("p") == .stopping)
        #expect(h.fleet.status(of: "p")?.reason == "HA role unknown for 2 s (keep-for)")
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    /// A reload measures a changed lease from the last renewal: one already over ends at the
    /// timer, due at once; a reload to another source drops the lease.
    @Test func reloadChangesTheLease() {
        var h = Self.primaryNode(lease: 30)
        h.advance(10)
        h.run(.reload(Self.pacemaker(lease: 60)))
        #expect(h.roleTimer == .seconds(60) && h.state("p") == .running)
        h.run(.reload(Self.pacemaker(lease: 4)))
        #expect(h.roleTimer == .seconds(4) && h.state("p") == .running)
        h.fireRoleTimerIfDue()
        #expect(h.state("p") == .stopping && h.fleet.roleState.unknownSince == .seconds(4))
        h.exits("p", .killed(15))
        h.run(.roleChanged(.primary))
        h.started("p")
        h.run(.reload(Configuration(ha: HASettings(source: .dbus(service: "org.example.HAManager")), workers: Self.workers)))
        #expect(h.roleTimer == nil && h.fleet.roleState.lease == nil && h.fleet.roleState.reported == .unknown)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }

    /// Without a lease (the other sources), a reported role never ends by itself.
    @Test func otherSourcesHaveNoLease() {
        var h = FleetHarness(configuration(Self.workers, source: .dbus(service: "org.example.HAManager")), role: .unknown)
        h.run(.roleChanged(.primary))
        #expect(h.roleTimer == nil)
        h.advance(1e6)
        h.run(.roleTimerFired)
        #expect(h.fleet.roleState.reported == .primary)
        #expect(h.violations.isEmpty, "\(h.violations)")
    }
}
