// `maintenance` (issue 10): bgworkerd with the process runner and 100 workers on a private bus.
// Inhibit -> reply (every worker stopped) against Disable of the same 100 issued at once, and
// the last inhibitor closed -> all 100 running against Enable of the same 100 issued at once.
import ArgumentParser
import DBus
import Glibc
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
                if kind == 2 {
                    // Stop/Start write nothing: the same work as maintenance without the fsyncs.
                    let t0 = monotonicNanoseconds()
                    try await callAll(d, "Stop", names)
                    stop.addInterval(from: t0, to: monotonicNanoseconds())
                    try await checkNoneRuns(d, names)
                    await pause(100)
                    let from = d.states.nextIndex
                    let t1 = monotonicNanoseconds()
                    try await callAll(d, "Start", names)
                    let last = try await d.waitForRunning(count: count, prefix: prefix, from: from, timeout: .seconds(60))
                    start.addInterval(from: t1, to: last)
                } else if kind == 0 {
                    let t0 = monotonicNanoseconds()
                    let reply = try await d.call("Inhibit", [.string("bench"), .string("round \(round)")], timeout: .seconds(120))
                    inhibit.addInterval(from: t0, to: monotonicNanoseconds())
                    guard case .unixFD(let fd)? = reply.first else { throw BenchError("Inhibit answered \(reply)") }
                    try await checkNoneRuns(d, names)
                    await pause(100)
                    let from = d.states.nextIndex
                    let t1 = monotonicNanoseconds()
                    fd.close()
                    let last = try await d.waitForRunning(count: count, prefix: prefix, from: from, timeout: .seconds(60))
                    release.addInterval(from: t1, to: last)
                } else {
                    let t0 = monotonicNanoseconds()
                    try await callAll(d, "Disable", names)
                    disable.addInterval(from: t0, to: monotonicNanoseconds())
                    try await checkNoneRuns(d, names)
                    await pause(100)
                    let from = d.states.nextIndex
                    let t1 = monotonicNanoseconds()
                    try await callAll(d, "Enable", names)
                    let last = try await d.waitForRunning(count: count, prefix: prefix, from: from, timeout: .seconds(60))
                    enable.addInterval(from: t1, to: last)
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
