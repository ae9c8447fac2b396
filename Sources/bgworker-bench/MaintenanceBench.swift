// `maintenance` (issue 10): bgworkerd with the process runner and 100 workers on a private bus.
// Inhibit -> reply (every worker stopped) against Disable of the same 100 issued at once, and
// the last inhibitor closed -> all 100 running against Enable of the same 100 issued at once.
import ArgumentParser
import DBus
import Glibc
import SystemSupport
import TestSupport

struct MaintenanceBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "maintenance",
        abstract: "bgworkerd (process runner): Inhibit and its release with 100 workers, against Disable and Enable of the same 100.")

    @OptionGroup var common: CommonOptions

    @Option(help: "Workers that maintenance holds.")
    var workers = 100
    @Option(help: "Rounds (each: Inhibit and release, Disable and Enable of all, Stop and Start of all).")
    var rounds = 10

    func run() async throws {
        try await common.emit([try await Self.measure(workers: workers, rounds: rounds)])
    }

    static let prefix = "held"

    static func measure(workers count: Int = 100, rounds: Int = 10) async throws -> Section {
        var section = Section("maintenance: Inhibit and release with \(count) workers, process runner (issue 10)")
        progress("maintenance: \(count) workers, \(rounds) rounds")
        let d = try await BenchDaemon.start(workerTables(count, prefix: prefix, argv: DaemonBenchmark.worker))
        _ = try await d.waitForRunning(count: count, prefix: prefix, from: 0, timeout: .seconds(60))
        let names = (1...count).map { prefix + String(format: "%04d", $0) }
        var inhibit = Samples(), release = Samples(), disable = Samples(), enable = Samples()
        var stop = Samples(), start = Samples()
        for round in 0..<rounds {
            // Rotate which comes first, so that none always meets a freshly started fleet.
            let order = [[0, 1, 2], [1, 2, 0], [2, 0, 1]][round % 3]
            for kind in order {
                // Each pair: its stop (until the reply; nothing may run then), then its start
                // (until the last worker's running signal).
                let stopMember: String, startMember: String
                switch kind {
                case 0: (stopMember, startMember) = ("Inhibit", "release")
                case 1: (stopMember, startMember) = ("Disable", "Enable")
                default: (stopMember, startMember) = ("Stop", "Start")  // writes nothing: no fsyncs
                }
                var inhibitor: UnixFD?
                let t0 = monotonicNanoseconds()
                if kind == 0 {
                    let reply = try await d.call("Inhibit", [.string("bench"), .string("round \(round)")], timeout: .seconds(120))
                    guard case .unixFD(let fd)? = reply.first else { throw BenchError("Inhibit answered \(reply)") }
                    inhibitor = fd
                } else {
                    try await callAll(d, stopMember, names)
                }
                let stopped = monotonicNanoseconds()
                try await checkNoneRuns(d, names)
                await pause(100)
                let from = d.states.nextIndex
                let t1 = monotonicNanoseconds()
                if let inhibitor { inhibitor.close() } else { try await callAll(d, startMember, names) }
                let last = try await d.waitForRunning(count: count, prefix: prefix, from: from, timeout: .seconds(60))
                switch kind {
                case 0: inhibit.addInterval(from: t0, to: stopped); release.addInterval(from: t1, to: last)
                case 1: disable.addInterval(from: t0, to: stopped); enable.addInterval(from: t1, to: last)
                default: stop.addInterval(from: t0, to: stopped); start.addInterval(from: t1, to: last)
                }
                await pause(100)
            }
        }
        await d.stop()
        section.figures.append(Figure("Inhibit -> reply (\(count) stopped)", inhibit,
                                      baseline: ("Disable x\(count) at once -> replies", disable.p50), aim: "<= 1.2x"))
        section.figures.append(Figure("release -> \(count) running", release,
                                      baseline: ("Enable x\(count) at once -> running", enable.p50), aim: "<= 1.2x"))
        section.figures.append(Figure("  Disable x\(count) at once -> every reply", disable))
        section.figures.append(Figure("  Enable x\(count) at once -> every worker running", enable))
        section.figures.append(Figure("Inhibit -> reply, against Stop", inhibit,
                                      baseline: ("Stop x\(count) at once -> replies", stop.p50), aim: "-"))
        section.figures.append(Figure("release -> running, against Start", release,
                                      baseline: ("Start x\(count) at once -> running", start.p50), aim: "-"))
        section.notes.append("worker: `\(DaemonBenchmark.worker.joined(separator: " "))`; Inhibit waits for every held process to be gone, as each Disable does; 'running' is the last of the \(count) WorkerStateChanged running signals; release closes the only inhibitor's fd; Disable/Enable persist the intent (fsync) one request at a time; Stop/Start (not persisted) are the same stops and starts without the writes")
        return section
    }

    /// Every call at once; throws the first failure.
    static func callAll(_ d: BenchDaemon, _ member: String, _ names: [String]) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for name in names {
                group.addTask { try await d.call(member, [.string(name)], timeout: .seconds(120)) }
            }
            try await group.waitForAll()
        }
    }

    /// The bus agrees: no worker has a process.
    static func checkNoneRuns(_ d: BenchDaemon, _ names: [String]) async throws {
        let pids = try await d.pids()
        if let running = names.first(where: { (pids[$0] ?? 0) != 0 }) { throw BenchError("\(running) still runs") }
    }
}
