import Foundation
import Glibc
import Testing
import TestSupport

// A real three-node Pacemaker/Corosync cluster (PacemakerCluster: each node its own network,
// mount and UTS namespaces, its own dbus-daemon and bgworkerd), stonith disabled,
// no-quorum-policy=stop, corosync token 1000 ms, monitors every 2 s (promoted) and 3 s
// (unpromoted), [ha] lease = 6 s. Every run of a worker is recorded by the worker itself, so the
// overlap of two primaries is measured, not sampled. Figures in docs/pacemaker.md.

private func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }

@Suite(.serialized, .enabled(if: rootTestsEnabled, "needs root: network and mount namespaces for the three-node cluster"))
struct PacemakerClusterTests {
    /// One primary after convergence; a standby of the promoted node and a move back with
    /// `crm_resource --move` each move the primary workers with never two primaries at once.
    @Test func convergesAndMovesWithoutOverlap() async throws {
        try await PacemakerCluster.with { cluster in
            let first = try await cluster.waitForOnePrimary()
            for node in cluster.nodes where node !== first { #expect(node.history.value.role == "secondary") }

            // Standby of the promoted node: it demotes (its p stops before the reply), another promotes.
            let t0 = ContinuousClock.now
            try await cluster.execChecked(first, ["crm_standby", "-N", first.name, "-v", "on"])
            try await cluster.waitForRole("unknown", on: first)
            let second = try await cluster.waitForOnePrimary(among: cluster.nodes.filter { $0 !== first })
            print("standby of \(first.name): primary on \(second.name) after \(seconds(ContinuousClock.now - t0)) s")
            #expect(cluster.longestOverlap() <= 0, "\(cluster.intervals)")

            // Move the promoted instance to the first node again.
            try await cluster.execChecked(first, ["crm_standby", "-N", first.name, "-v", "off"])
            try await cluster.waitForRole("secondary", on: first)
            let t1 = ContinuousClock.now
            try await cluster.execChecked(first, ["crm_resource", "--move", "-r", "bgw", "-N", first.name, "--promoted"])
            try await cluster.waitForRole("primary", on: first)
            print("move to \(first.name): primary after \(seconds(ContinuousClock.now - t1)) s")
            try await cluster.waitForOnePrimary()
            #expect(cluster.longestOverlap() <= 0, "\(cluster.intervals)")
            try await cluster.execChecked(first, ["crm_resource", "--clear", "-r", "bgw"])
        }
    }

    /// corosync and pacemakerd SIGKILLed on the promoted node: the other two keep quorum and
    /// promote one of them; nobody renews the dead node's lease, so its bgworkerd drops to
    /// `unknown` and stops p. Without fencing the two overlap for at most the lease (+ stop time);
    /// a lease shorter than the failover (about 4.7 s here), with monitors to match, removes it.
    @Test(arguments: [(6.0, 2.0, 3.0), (3.0, 1.0, 1.5)])
    func clusterStackKilledOnThePromotedNode(lease: Double, monitorPromoted: Double, monitorUnpromoted: Double) async throws {
        try await PacemakerCluster.with(lease: lease, monitorPromoted: monitorPromoted, monitorUnpromoted: monitorUnpromoted) { cluster in
            let dead = try await cluster.waitForOnePrimary()
            let survivors = cluster.nodes.filter { $0 !== dead }
            let wall0 = Date().timeIntervalSince1970
            let t0 = ContinuousClock.now
            try await cluster.killStack(on: dead)
            let next = try await cluster.waitForOnePrimary(among: survivors, timeout: .seconds(60))
            let takeover = seconds(ContinuousClock.now - t0)
            try await cluster.waitForRole("unknown", on: dead, timeout: .seconds(cluster.lease * 3))
            let overlap = cluster.longestOverlap()
            let (oldEnd, newStart) = cluster.handover(from: dead, at: wall0)
            print("stack killed on \(dead.name): p started on \(next.name) after \((newStart ?? .nan) - wall0) s (seen \(takeover) s); "
                + "\(dead.name)'s p stopped after \((oldEnd ?? .nan) - wall0) s; overlap \(overlap) s (lease \(cluster.lease) s)")
            #expect(dead.log.contains("no SetHARole within the lease"), "the lease, not the cluster, ended the role")
            let quorum = try await cluster.execChecked(next, ["corosync-quorumtool", "-s"])
            #expect(quorum.contains("Quorate:          Yes"), "\(quorum)")
            #expect(overlap <= cluster.lease + 3.5, "\(cluster.intervals)")
            // The dead node's p ended within the lease (+ its stop) of the kill.
            #expect(try #require(oldEnd) - wall0 <= cluster.lease + 1, "\(cluster.intervals)")
            if cluster.lease + 1 < (newStart ?? 0) - wall0 { #expect(overlap <= 0, "\(cluster.intervals)") }
        }
    }

    /// The promoted node's link goes down: it loses quorum and stops its instance (no-quorum-
    /// policy=stop), so its p stops; the majority promotes elsewhere.
    @Test func partitionedPromotedNodeLosesQuorum() async throws {
        try await PacemakerCluster.with { cluster in
            let cut = try await cluster.waitForOnePrimary()
            let majority = cluster.nodes.filter { $0 !== cut }
            let wall0 = Date().timeIntervalSince1970
            let t0 = ContinuousClock.now
            try await cluster.isolate(cut)
            try await cluster.waitForRole("unknown", on: cut, timeout: .seconds(60))
            let stopped = seconds(ContinuousClock.now - t0)
            let next = try await cluster.waitForOnePrimary(among: majority, timeout: .seconds(60))
            let takeover = seconds(ContinuousClock.now - t0)
            let overlap = cluster.longestOverlap()
            let quorum = try await cluster.exec(cut, ["corosync-quorumtool", "-s"])
            let (oldEnd, newStart) = cluster.handover(from: cut, at: wall0)
            print("\(cut.name) isolated: its p stopped after \((oldEnd ?? .nan) - wall0) s (role unknown seen \(stopped) s); "
                + "p started on \(next.name) after \((newStart ?? .nan) - wall0) s (seen \(takeover) s); overlap \(overlap) s")
            #expect(quorum.stdout.contains("Quorate:          No"), "\(quorum.stdout)")
            // Its own cluster stopped the instance (no-quorum-policy=stop); the lease did not have to.
            #expect(!cut.log.contains("no SetHARole within the lease"), "\(cut.log)")
            #expect(overlap <= cluster.lease + 3.5, "\(cluster.intervals)")
        }
    }

    /// bgworkerd SIGKILLed and restarted on the promoted node: it starts as `unknown`, the next
    /// monitor reports 7, Pacemaker recovers the instance, and a primary is back within one
    /// monitor interval plus the recovery.
    @Test func daemonRestartedOnThePromotedNode() async throws {
        try await PacemakerCluster.with { cluster in
            let node = try await cluster.waitForOnePrimary()
            try await cluster.killDaemon(on: node)
            try await cluster.startDaemon(on: node)
            let t0 = ContinuousClock.now
            let primary = try await cluster.waitForOnePrimary(timeout: .seconds(60))
            let back = seconds(ContinuousClock.now - t0)
            print("bgworkerd restarted on \(node.name): primary again on \(primary.name) after \(back) s (monitor \(cluster.monitorPromoted) s)")
            #expect(back <= cluster.monitorPromoted + 5, "role back after \(back) s")
            #expect(cluster.longestOverlap() <= 0, "\(cluster.intervals)")
        }
    }
}
