import TestSupport
import Testing

@testable import BgWorkerCore

@Suite struct FleetRandomTests {
    /// 2000 random event sequences of 120 steps — bus calls (Stop/Start and log levels too), role changes (incl. bursts), reloads that
    /// add/remove/change workers (and flip `run-during-maintenance`), inhibitors taken and
    /// released (maintenance), starts and exits delivered late and in any order, early and
    /// late timers, shutdown — checking after every step that no worker has two processes, that
    /// no worker maintenance holds is spawned, that every state change is announced exactly once,
    /// that settled workers obey the run rule (maintenance included), that `maintenanceSettled`
    /// is right, and that only backoff workers have a timer. At the end maintenance ends (every
    /// worker the rules allow runs again) and everything settles.
    @Test(arguments: 0..<4)
    func randomSequencesKeepTheInvariants(batch: UInt64) {
        for seed in (batch * 500)..<(batch * 500 + 500) {
            var rng = SeededRandom(seed: seed)
            let violations = runSequence(&rng, steps: 120)
            if !violations.isEmpty {
                Issue.record("seed \(seed): \(violations.prefix(5))")
                return
            }
        }
    }

    private func randomDefinition(_ name: String, _ rng: inout SeededRandom) -> WorkerDefinition {
        let delay = [0.0, 0.5, 1, 2].randomElement(using: &rng)!
        var result = definition(
            name, runOn: RunOn.allCases.randomElement(using: &rng)!, enabled: Int.random(in: 0..<4, using: &rng) != 0,
            delay: delay, delayMax: delay * [1, 4, 16].randomElement(using: &rng)!,
            stableAfter: [0.0, 1, 5].randomElement(using: &rng)!, burst: [0, 1, 3, 5].randomElement(using: &rng)!,
            interval: [1.0, 10].randomElement(using: &rng)!,
            exec: ["/bin/w", ["a", "b"].randomElement(using: &rng)!], logLevel: randomLevel(&rng),
            duringMaintenance: Int.random(in: 0..<3, using: &rng) == 0)
        if Int.random(in: 0..<3, using: &rng) == 0 { result.ready = .notify }
        return result
    }

    private func randomLevel(_ rng: inout SeededRandom) -> LogLevel? {
        [nil, nil, LogLevel.debug, .info, .error].randomElement(using: &rng)!
    }

    private func randomConfiguration(_ rng: inout SeededRandom) -> Configuration {
        let names = ["a", "b", "c", "d"].filter { _ in Int.random(in: 0..<5, using: &rng) != 0 }
        let sources: [HASource] = [.none, .dbus(service: "org.example.HAManager")]
        var result = configuration(
            names.map { randomDefinition($0, &rng) }, onLost: OnLost.allCases.randomElement(using: &rng)!,
            keepFor: [0.0, 0.5, 2, 10].randomElement(using: &rng)!, source: sources.randomElement(using: &rng)!)
        result.daemon.logLevel = [LogLevel.info, .warning].randomElement(using: &rng)!
        return result
    }

    private func runSequence(_ rng: inout SeededRandom, steps: Int) -> [String] {
        let roles = HARole.allCases
        var h = FleetHarness(randomConfiguration(&rng), role: roles.randomElement(using: &rng)!)
        let allNames = ["a", "b", "c", "d", "nope"]
        var trace: [(Int, [FleetAction], RoleState)] = []
        // The inhibitors held, oldest first, as the daemon keeps them.
        var holders: [MaintenanceHold] = []
        var nextHolder = 0
        for step in 0..<steps {
            let name = allNames.randomElement(using: &rng)!
            switch Int.random(in: 0..<22, using: &rng) {
            case 20, 21:
                // The notify protocol: from the live process, or stale (an old pid).
                let pid = h.live[name] ?? 1
                switch Int.random(in: 0..<5, using: &rng) {
                case 0, 1: h.ready(name, pid: pid)
                case 2: h.run(.processReloading(name, pid: pid))
                case 3: h.run(.processStopping(name, pid: pid))
                default: h.run(.processStatus(name, pid: pid, text: "step \(step)"))
                }
            case 18, 19:
                // Take an inhibitor, or release any one of them (its holder closed it or died).
                if holders.isEmpty || Bool.random(using: &rng) {
                    nextHolder += 1
                    holders.append(MaintenanceHold(who: "h\(nextHolder)", why: "test"))
                } else {
                    holders.remove(at: Int.random(in: 0..<holders.count, using: &rng))
                }
                h.run(.maintenance(holders.first))
            case 0: _ = try? h.send(.enable(name))
            case 1: _ = try? h.send(.disable(name))
            case 2:
                do {
                    try h.send(Bool.random(using: &rng) ? .restart(name) : .start(name))
                } catch .disabled(let worker) {
                    if h.fleet.status(of: worker)?.enabled != false { h.violations.append("Disabled error for enabled \(worker)") }
                } catch {}
            case 3, 4:
                // A single change or a burst of them.
                for _ in 0..<Int.random(in: 1...4, using: &rng) { h.run(.roleChanged(roles.randomElement(using: &rng)!)) }
            case 5, 6, 7:
                if h.spawning.contains(name) {
                    if Int.random(in: 0..<4, using: &rng) == 0 { h.failsToStart(name) } else { h.started(name) }
                }
            case 8, 9:
                // An exit: by itself, or late after a stop.
                if h.live[name] != nil {
                    h.exits(name, [WorkerExit.exited(0), .exited(3), .killed(15), .killed(9), .dumped(11)].randomElement(using: &rng)!)
                }
            case 10, 11:
                h.advance([0.1, 0.5, 1, 3, 20].randomElement(using: &rng)!)
                if Bool.random(using: &rng) { h.fireDueTimers() }
                if Bool.random(using: &rng) { h.fireRoleTimerIfDue() }
            case 12:
                // A stale or early timer.
                h.run(.timerFired(name))
                if Int.random(in: 0..<4, using: &rng) == 0 { h.run(.roleTimerFired) }
            case 13:
                // Stale runner events must be ignored.
                h.run(.processExited(name, pid: 1, status: .exited(0)))
                if !h.spawning.contains(name) { h.run(.processStarted(name, pid: 2)) }
            case 14:
                h.run(.reload(randomConfiguration(&rng)))
            case 16:
                _ = try? h.send(.stop(name))
            case 17:
                if Bool.random(using: &rng) {
                    h.run(.managerLogLevel([LogLevel.info, .warning, .trace].randomElement(using: &rng)!))
                } else {
                    _ = try? h.send(.workerLogLevel(name, randomLevel(&rng)))
                }
            default:
                if Int.random(in: 0..<10, using: &rng) == 0 { h.run(.shutdown) }
            }
            // Kept cheap: turned into text only when something fails.
            trace.append((step, h.lastActions, h.fleet.roleState))
            if trace.count > 4 { trace.removeFirst() }
            if !h.violations.isEmpty { return h.violations + trace.map { "step \($0.0): \($0.1) role \($0.2)" } }
        }
        // Maintenance ends: the invariants (no standby that the rules would run) check the restart.
        h.run(.maintenance(nil))
        if !h.violations.isEmpty { return h.violations + trace.map { "step \($0.0): \($0.1) role \($0.2)" } }
        // Settle: deliver every start and exit, fire every timer, until quiet.
        h.run(.shutdown)
        var rounds = 0
        while h.fleet.hasProcesses || !h.spawning.isEmpty {
            rounds += 1
            if rounds > 100 {
                h.violations.append("does not settle")
                break
            }
            for name in h.spawning.sorted() { h.started(name) }
            for name in h.live.keys.sorted() { h.exits(name, .killed(15)) }
        }
        if !h.timers.isEmpty { h.violations.append("timers left after shutdown: \(h.timers)") }
        for status in h.fleet.workers where !status.state.isSettled || status.state == .running {
            h.violations.append("\(status.name) not settled after shutdown: \(status.state)")
        }
        return h.violations
    }
}
