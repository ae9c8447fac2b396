// `pacemaker` (issue 14): a real three-node Pacemaker/Corosync cluster (PacemakerCluster, root):
// `crm_resource --move` of the promoted instance -> the primary worker exec'd on the new node,
// beside Pacemaker's own time from the move to the agent's `promote` call there; and a node's
// cluster stack SIGKILLed -> the primary worker running elsewhere, beside Pacemaker's time to
// `promote`. The agent's calls are stamped by the test wrapper (`scripts/lib/pacemaker-cluster.sh`).
import ArgumentParser
import DBus
import Foundation
import Glibc
import SystemSupport
import TestSupport

struct PacemakerBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pacemaker",
        abstract: "Three-node Pacemaker cluster (root): move -> worker exec'd; stack kill -> worker elsewhere.")

    @OptionGroup var common: CommonOptions

    @Option(help: "Moves of the promoted instance (crm_resource --move).")
    var moves = 10

    func run() async throws {
        try await common.emit([try await Self.measure(moves: moves)])
    }

    static func measure(moves: Int) async throws -> Section {
        var section = Section("pacemaker: three nodes, [ha] source = \"pacemaker\", ocf:bgworker:role (issue 14)")
        guard isRoot, let events = try? ProcessEvents.start() else {
            section.skipped = "needs root: network and mount namespaces, and the kernel's process events"
            return section
        }
        guard which("pacemakerd") != nil, which("corosync") != nil else {
            section.skipped = "pacemaker and corosync are not installed"
            return section
        }
        progress("pacemaker: three-node cluster, \(moves) moves and one stack kill")
        return try await PacemakerCluster.with { cluster in
            for node in cluster.nodes { if let d = node.bgworkerd { events.watch(parent: d.process.pid) } }
            var roleLogs: [String: SignalLog] = [:]
            for node in cluster.nodes {
                roleLogs[node.name] = try await SignalLog(
                    address: node.bus.unixAddress, MatchRule(interface: "org.example.BgWorker", member: "HARoleChanged"))
            }
            var current = try await cluster.waitForOnePrimary()
            var total = Samples(), pacemaker = Samples(), ours = Samples(), daemon = Samples(), call = Samples()
            for i in 0..<moves {
                let target = cluster.nodes.filter { $0 !== current }[i % 2]
                guard let targetPid = target.bgworkerd?.process.pid else { throw BenchError("no bgworkerd on \(target.name)") }
                // Realtime (the agent's stamps) and monotonic (the kernel's exec stamps) read together.
                guard let roles = roleLogs[target.name] else { throw BenchError("no signal log for \(target.name)") }
                let from = roles.nextIndex
                let t0 = monotonicNanoseconds()
                let wall0 = Date().timeIntervalSince1970
                try await cluster.execChecked(current, ["crm_resource", "--move", "-r", "bgw", "-N", target.name, "--promoted"])
                let exec = try await events.exec(childOf: targetPid, after: t0, timeout: .seconds(30))
                let announced = try await roles.next(from: from, timeout: .seconds(30), "HARoleChanged primary on \(target.name)") {
                    $0.arguments.first?.stringValue == "primary"
                }
                try await cluster.waitForOnePrimary()
                try await cluster.execChecked(target, ["crm_resource", "--clear", "-r", "bgw"])
                guard let promote = cluster.agentCalls(on: target).last(where: { $0.action == "promote" && $0.start >= wall0 }) else {
                    throw BenchError("no promote call recorded on \(target.name)")
                }
                let execWall = wall0 + Double(exec.timestamp - t0) / 1e9
                total.add((execWall - wall0) * 1000)
                pacemaker.add((promote.start - wall0) * 1000)
                ours.add((execWall - promote.start) * 1000)
                daemon.add(Double(Int64(exec.timestamp) - Int64(announced.at)) / 1e6)
                call.add((wall0 + Double(announced.at - t0) / 1e9 - promote.start) * 1000)
                current = target
                await pause(1000)
            }
            var s = section
            s.figures.append(Figure("crm_resource --move -> worker exec'd on the new node", total,
                                    baseline: ("Pacemaker: move -> agent's promote call", pacemaker.p50)))
            s.figures.append(Figure("agent's promote call -> worker exec'd (agent + busctl + bgworkerd)", ours))
            s.figures.append(Figure("  bgworkerd: HARoleChanged(primary) -> worker exec'd", daemon, aim: "< 5 ms"))
            s.figures.append(Figure("  the agent: promote call -> HARoleChanged(primary) (shell, ocf-shellfuncs, busctl)", call))
            s.figures.append(Figure("  Pacemaker: move -> agent's promote call on the new node", pacemaker))

            // One kill: the cluster is not put back together afterwards.
            let survivors = cluster.nodes.filter { $0 !== current }
            let t0 = monotonicNanoseconds()
            let wall0 = Date().timeIntervalSince1970
            try await cluster.killStack(on: current)
            // The first worker exec'd by a survivor's bgworkerd is the new primary's p.
            let (next, exec) = try await withThrowingTaskGroup(of: (PacemakerCluster.Node, ProcessEvents.Exec).self) { group in
                for node in survivors {
                    guard let pid = node.bgworkerd?.process.pid else { continue }
                    group.addTask { (node, try await events.exec(childOf: pid, after: t0, timeout: .seconds(60))) }
                }
                defer { group.cancelAll() }
                guard let first = try await group.next() else { throw BenchError("no survivor has a bgworkerd") }
                return first
            }
            guard let promote = cluster.agentCalls(on: next).last(where: { $0.action == "promote" && $0.start >= wall0 }) else {
                throw BenchError("no promote call recorded on \(next.name) after \(wall0): \(cluster.agentCalls(on: next).suffix(5))")
            }
            let started = wall0 + Double(exec.timestamp - t0) / 1e9
            var kill = Samples(), killPacemaker = Samples(), killOurs = Samples()
            kill.add((started - wall0) * 1000)
            killPacemaker.add((promote.start - wall0) * 1000)
            killOurs.add((started - promote.start) * 1000)
            s.figures.append(Figure("SIGKILL corosync + pacemakerd on the promoted node -> worker running elsewhere", kill,
                                    baseline: ("Corosync token loss + Pacemaker: kill -> promote call", killPacemaker.p50), showMax: true))
            s.figures.append(Figure("  agent's promote call -> worker exec'd", killOurs, showMax: true))
            s.notes.append("corosync token 1000 ms, monitors 2 s (Promoted) / 3 s (Unpromoted), [ha] lease = 6, stonith off; bgworkerd debug or release as built next to this program")
            s.notes.append("HARoleChanged stamped on arrival on the node's bus (bgworkerd emits it just before it spawns, so it can arrive after the exec: a negative figure); exec by the kernel's process events; the agent's calls stamped (CLOCK_REALTIME) by the test wrapper before and after the agent")
            return s
        }
    }
}
