// `systemd-scale` (issue 16; root): N workers as transient units through bgworkerd --runner
// systemd, inside a private systemd 252. Cold start beside systemd-run starting the same N units
// one after the other; a restart after SIGKILL (adoption, then the name) beside systemd's own
// ListUnitsByPatterns of those units.
import ArgumentParser
import DBus
import Foundation
import Glibc
import SystemSupport
import TestSupport

struct SystemdScaleBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "systemd-scale",
        abstract: "Cold start and adoption of N workers as systemd units, beside systemd-run and ListUnitsByPatterns (root).")

    @OptionGroup var common: CommonOptions

    @Option(help: "Worker counts, comma-separated.")
    var sizes = "30,300,3000"

    func run() async throws {
        let counts = sizes.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }.filter { $0 > 0 }
        guard !counts.isEmpty else { throw ValidationError("--sizes: no positive count in '\(sizes)'") }
        try await common.emit([try await Self.measure(sizes: counts)])
    }

    static let argv = ["/bin/sleep", "3600"]

    static func measure(sizes: [Int]) async throws -> Section {
        var section = Section("systemd-scale: N workers as units, cold start and adoption after SIGKILL (issue 16)")
        guard isRoot else {
            section.skipped = "needs root: PID and mount namespaces for a private systemd"
            return section
        }
        return try await withBenchNamespace("systemd-scale") { ns, directory in
            var s = section
            for count in sizes {
                progress("systemd-scale: \(count) units with systemd-run, one after the other")
                let systemdRun = try await systemdRunOneAfterTheOther(ns, count)
                progress("systemd-scale: \(count) workers through bgworkerd")
                let r = try await throughDaemon(ns, count, run: "\(directory)/n\(count)")
                s.figures.append(Figure("\(count) workers: cold start -> READY=1", unit: "ms", value: r.coldStart,
                                        baseline: ("systemd-run x \(count), one after the other", systemdRun)))
                let floor = ("busctl call ListUnitsByPatterns of the \(count) units", r.busctlList.p50)
                s.figures.append(Figure("\(count) workers: restart after SIGKILL -> name owned (all adopted)", unit: "ms",
                                        value: r.nameOwned, baseline: floor))
                s.figures.append(Figure("\(count) workers: restart after SIGKILL -> READY=1", unit: "ms", value: r.ready, baseline: floor))
                s.figures.append(Figure("\(count) units: ListUnitsByPatterns, the call alone", r.listUnits))
            }
            s.notes.append("every worker and unit runs `\(argv.joined(separator: " "))` inside the same systemd 252 namespace, on its stock system bus configuration; bgworkerd runs there too (nsenter) and serves a private dbus-daemon")
            s.notes.append("cold start: from spawning bgworkerd to READY=1 (every worker's first start answered), every worker then read `running` with ListWorkers; systemd-run: one `systemd-run --quiet --unit=...` after the other in one shell inside the namespace, each waiting for its start job")
            s.notes.append("restart: the daemon is SIGKILLed with its N units running; from spawning the new one to its bus name appearing (it adopts every unit before it asks for the name) and to READY=1; every worker then read `running` with the pid it had; the floor is a new `busctl call ... ListUnitsByPatterns as 0 as 1 bgworker-*.service` started the same way (nsenter), i.e. a process that starts, connects to systemd's bus and lists the units, p50 of 5; the call alone, from a connected client, is shown too")
            return s
        }
    }

    /// Wall time (ms) of `count` systemd-run calls one after the other; the units are stopped after.
    static func systemdRunOneAfterTheOther(_ ns: SystemdNamespace, _ count: Int) async throws -> Double {
        let script = """
            i=0
            while [ $i -lt \(count) ]; do
                systemd-run --quiet --unit=bgwfloor-$i \(argv.joined(separator: " ")) || exit 1
                i=$((i + 1))
            done
            """
        let t0 = monotonicNanoseconds()
        let started = try await ns.run(inside: ["sh", "-c", script], timeout: .seconds(60 + count / 10))
        let elapsed = Double(monotonicNanoseconds() - t0) / 1e6
        guard started.status == 0 else { throw BenchError("systemd-run failed: \(started.stderr)") }
        let stopped = try await ns.run(inside: ["systemctl", "stop", "bgwfloor-*"], timeout: .seconds(120 + count / 10))
        guard stopped.status == 0 else { throw BenchError("systemctl stop bgwfloor-*: \(stopped.stderr)") }
        return elapsed
    }

    struct Result {
        var coldStart: Double, nameOwned: Double, ready: Double
        var listUnits: Samples, busctlList: Samples
    }

    static func throughDaemon(_ ns: SystemdNamespace, _ count: Int, run: String) async throws -> Result {
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
        let bus = try await PrivateBus(socketPath: "\(run)/bus.sock")
        let configPath = "\(run)/bgworkerd.toml"
        try BenchDaemon.writeConfiguration(workerTables(count, prefix: "w", argv: argv), to: configPath, stateDirectory: "\(run)/state")
        let client = try await DBusConnection.connect(.address(bus.unixAddress))
        let systemd = try await DBusConnection.connect(.address(ns.busAddress))
        var daemon: NamespacedDaemon?
        defer {
            client.close()
            systemd.close()
        }
        do {
            let timeout = Duration.seconds(60 + count / 20)
            let first = try await NamespacedDaemon.start(ns, run: run, configPath: configPath, busAddress: bus.unixAddress,
                                                         runner: "systemd", timeout: timeout)
            daemon = first
            let coldStart = Double(first.readyAt - first.spawnedAt) / 1e6
            let before = try await workers(client)
            guard before.count == count, before.values.allSatisfy({ $0.state == "running" }) else {
                throw BenchError("after the cold start \(before.values.filter { $0.state == "running" }.count) of \(count) workers run")
            }
            var listUnits = Samples()
            for _ in 0..<5 {
                let t0 = monotonicNanoseconds()
                let reply = try await systemd.call(destination: "org.freedesktop.systemd1", path: try ObjectPath("/org/freedesktop/systemd1"),
                                                   interface: "org.freedesktop.systemd1.Manager", member: "ListUnitsByPatterns",
                                                   arguments: [.stringArray([]), .stringArray(["bgworker-*.service"])])
                listUnits.addInterval(from: t0, to: monotonicNanoseconds())
                guard reply.first?.arrayValue?.count == count else { throw BenchError("ListUnitsByPatterns: not \(count) units") }
            }

            var busctlList = Samples()
            for _ in 0..<5 {
                let t0 = monotonicNanoseconds()
                let listed = try await ns.run(inside: ["busctl", "--quiet", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                                                       "org.freedesktop.systemd1.Manager", "ListUnitsByPatterns", "asas", "0", "1",
                                                       "bgworker-*.service"])
                busctlList.addInterval(from: t0, to: monotonicNanoseconds())
                guard listed.status == 0 else { throw BenchError("busctl ListUnitsByPatterns: \(listed.stderr)") }
            }

            await first.stop(signal: SIGKILL)
            let watch = try await client.watchNameOwner(Manager.name)
            let owned = Task { () -> UInt64? in
                for await event in watch {
                    if case .ownerChanged(_, _?) = event { return monotonicNanoseconds() }
                }
                return nil
            }
            let second = try await NamespacedDaemon.start(ns, run: run, configPath: configPath, busAddress: bus.unixAddress,
                                                          runner: "systemd", logName: "bgworkerd-2.log", timeout: timeout)
            daemon = second
            guard let ownedAt = await owned.value else { throw BenchError("the name watch ended") }
            let after = try await workers(client)
            let lost = before.filter { name, row in after[name] != row }
            guard lost.isEmpty else { throw BenchError("\(lost.count) workers not adopted running with their pid, e.g. \(lost.keys.sorted().prefix(3))") }
            progress("systemd-scale: stopping \(count) workers")
            await second.stop(timeout: .seconds(120 + count / 10))
            daemon = nil
            await bus.stop()
            return Result(coldStart: coldStart, nameOwned: Double(ownedAt - second.spawnedAt) / 1e6,
                          ready: Double(second.readyAt - second.spawnedAt) / 1e6, listUnits: listUnits, busctlList: busctlList)
        } catch {
            let log = daemon?.log ?? ""
            await daemon?.stop(timeout: .seconds(120 + count / 10))
            await bus.stop()
            throw BenchError("\(count) workers: \(error)\n--- bgworkerd log (tail) ---\n\(log.suffix(4000))")
        }
    }

    struct Row: Equatable {
        var state: String, pid: UInt32
    }

    static func workers(_ client: DBusConnection) async throws -> [String: Row] {
        let reply = try await client.call(destination: Manager.name, path: Manager.path, interface: Manager.interface,
                                          member: "ListWorkers", timeout: .seconds(60))
        var rows: [String: Row] = [:]
        for case .structure(let f) in reply.first?.arrayValue ?? [] where f.count == 5 {
            guard let name = f[0].stringValue, let state = f[1].stringValue, let pid = f[3].uint32Value else { continue }
            rows[name] = Row(state: state, pid: pid)
        }
        return rows
    }
}
