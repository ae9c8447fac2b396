// `scale` (issue 15): N `/bin/sleep` workers with the process runner on a private bus: start ->
// READY=1, Reload changing every worker, Reload changing none, ListWorkers / GetManagedObjects
// (our client and busctl), RSS, fds, SIGTERM -> exit; beside the bench spawning and reaping the
// same N processes (the floor).
import ArgumentParser
import BgWorkerAPI
import CShims
import DBus
import Foundation
import Glibc
import SystemSupport
import TestSupport

struct ScaleBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scale",
        abstract: "N workers: start, stop, reload, bus reads, RSS, fds, beside the bench's own spawn-and-reap of N (issue 15).")

    @OptionGroup var common: CommonOptions

    @Option(help: "Worker counts, comma-separated.")
    var sizes = "100,1000,10000"

    @Option(help: "The daemon's soft RLIMIT_NOFILE at its start (its hard limit is the bench's); systemd gives services 1024.")
    var daemonSoftNofile = 1024

    func run() async throws {
        let counts = sizes.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }.filter { $0 > 0 }
        guard !counts.isEmpty else { throw ValidationError("--sizes: no positive count in '\(sizes)'") }
        try await common.emit([try await Self.measure(sizes: counts, daemonSoftNofile: daemonSoftNofile)])
    }

    static let argv = ["/bin/sleep", "3600"]
    /// A different program line: a Reload with it changes every worker.
    static let changedArgv = ["/bin/sleep", "3601"]

    struct Floor {
        var spawn: Double, stop: Double
    }

    static func measure(sizes: [Int], daemonSoftNofile: Int) async throws -> Section {
        var section = Section("scale: N /bin/sleep workers, process runner, private bus (issue 15)")
        let largest = sizes.max() ?? 0
        // The floor holds 1 fd per process (its pipe), as the daemon does per worker.
        let hard = try raiseOwnNofile(to: largest + 4096)
        var perWorker: [(count: Int, start: Double, stop: Double, reloadAll: Double, reloadNone: Double)] = []
        for count in sizes {
            progress("scale: floor, the bench spawns and reaps \(count)")
            let floor = try await floorSpawnAndReap(count)
            progress("scale: \(count) workers through bgworkerd")
            let r = try await throughDaemon(count, softNofile: rlim_t(min(daemonSoftNofile, Int(hard))))
            let n = Double(count)
            section.figures.append(Figure("\(count): start -> READY=1", unit: "ms", value: r.start,
                                          baseline: ("bench spawns \(count)", floor.spawn),
                                          note: String(format: "%.3f ms per worker; every worker then `running` (ListWorkers)", r.start / n)))
            section.figures.append(Figure("\(count): Reload changing every worker -> all running again", unit: "ms", value: r.reloadAll,
                                          baseline: ("bench SIGTERMs, reaps, spawns \(count)", floor.stop + floor.spawn),
                                          note: String(format: "%.3f ms per worker", r.reloadAll / n)))
            section.figures.append(Figure("\(count): the same Reload back, under a client's back-to-back Gets", unit: "ms", value: r.reloadAllUnderReads,
                                          baseline: ("bench SIGTERMs, reaps, spawns \(count)", floor.stop + floor.spawn),
                                          note: String(format: "%.3f ms per worker", r.reloadAllUnderReads / n)))
            section.figures.append(Figure("\(count): Get State of one worker during that Reload", r.getDuringReload, baseline: ("GetId round trip", r.getId),
                                          aim: "p99 < 50 ms",
                                          note: "WorkerStateChanged received meanwhile: \(r.signalsDuringReload) (\(count) running among them, each counted)"))
            section.figures.append(Figure("\(count): Reload changing none -> reply", unit: "ms", value: r.reloadNone,
                                          baseline: ("GetId round trip", r.getId),
                                          note: String(format: "%.4f ms per worker", r.reloadNone / n)))
            section.figures.append(Figure("\(count): SIGTERM -> daemon exited (all gone)", unit: "ms", value: r.stop,
                                          baseline: ("bench SIGTERMs and reaps \(count)", floor.stop),
                                          note: String(format: "%.3f ms per worker", r.stop / n)))
            section.figures.append(Figure("\(count): ListWorkers, our client", r.listWorkers, baseline: ("GetId round trip", r.getId)))
            section.figures.append(Figure("\(count): GetManagedObjects, our client", r.managedObjects, baseline: ("GetId round trip", r.getId)))
            section.figures.append(Figure("\(count): busctl call ListWorkers (process)", r.busctlList, baseline: ("busctl call GetId (process)", r.busctlGetId.p50)))
            section.figures.append(Figure("\(count): busctl call GetManagedObjects (process)", r.busctlManaged, baseline: ("busctl call GetId (process)", r.busctlGetId.p50),
                                          note: "busctl reads the reply and prints it as text"))
            section.figures.append(Figure("\(count): busctl --quiet call GetManagedObjects (process)", r.busctlManagedQuiet, baseline: ("busctl call GetId (process)", r.busctlGetId.p50),
                                          note: "busctl reads the reply and does not print it"))
            section.figures.append(Figure("\(count): RSS after READY=1", unit: "KiB", value: r.rss,
                                          note: String(format: "%.1f KiB per worker", r.rss / n)))
            section.figures.append(Figure("\(count): fds held after READY=1", unit: "count", value: Double(r.fds),
                                          note: String(format: "%.2f per worker; soft RLIMIT_NOFILE then %@", Double(r.fds) / n, r.softLimit)))
            perWorker.append((count, r.start / n, r.stop / n, r.reloadAll / n, r.reloadNone / n))
        }
        if let base = perWorker.first(where: { $0.count >= 1000 }) ?? perWorker.first {
            for p in perWorker where p.count > base.count {
                for (what, value, baseValue) in [("start", p.start, base.start), ("SIGTERM -> exit", p.stop, base.stop),
                                                  ("Reload changing every worker", p.reloadAll, base.reloadAll),
                                                  ("Reload changing none", p.reloadNone, base.reloadNone)] {
                    section.figures.append(Figure("per worker, \(what), \(p.count) vs \(base.count)", unit: "ms", value: value,
                                                  baseline: ("per worker at \(base.count)", baseValue), aim: "<= 1.2x"))
                }
            }
        }
        section.notes.append("worker: `\(argv.joined(separator: " "))` exec'd directly; bgworkerd --runner process on a private dbus-daemon, default log level (info) to a file; its soft RLIMIT_NOFILE at start \(daemonSoftNofile), hard \(hard) (the bench's)")
        section.notes.append("floor: the bench posix_spawns the same program N times one after the other, as the runner does (own process group, stdin /dev/null, stdout and stderr on one pipe: 1 fd held each, as bgworkerd); then SIGTERMs all and reaps each (waitpid)")
        section.notes.append("start: from spawning bgworkerd to its READY=1 (every first start answered); Reload: from the call to the last of the N `running` signals (changing every worker: the program line changes, so each is stopped and started again; timed alone, then back to the first program while a client reads State with one Get after the other); SIGTERM: from the signal to the daemon's exit, which follows its last worker's")
        section.notes.append("bus reads: p50 of 5 from a connected client of the bench; busctl: a new `busctl --address=... call` process each time, stdout read to the end; with --quiet busctl reads the whole reply but prints nothing (without it, it spends ~0.3 s of its own CPU printing 10,000 objects as text)")
        return section
    }

    /// Raises the bench's own soft RLIMIT_NOFILE (and, as root, the hard one) to at least `needed`; returns the hard limit.
    static func raiseOwnNofile(to needed: Int) throws -> rlim_t {
        var limits = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits) == 0 else { throw BenchError("getrlimit: \(errno)") }
        if limits.rlim_max < rlim_t(needed), isRoot {
            // Without CAP_SYS_RESOURCE (a container) the hard limit stays as it is.
            var raised = limits
            raised.rlim_max = rlim_t(needed)
            raised.rlim_cur = raised.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { return raised.rlim_max }
        }
        limits.rlim_cur = limits.rlim_max
        guard setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits) == 0 else { throw BenchError("setrlimit NOFILE: \(errno)") }
        return limits.rlim_max
    }

    static func setOwnSoftNofile(_ soft: rlim_t) {
        var limits = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits) == 0 else { return }
        limits.rlim_cur = min(soft, limits.rlim_max)
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits)
    }

    static func floorSpawnAndReap(_ count: Int) async throws -> Floor {
        try await blocking { () throws -> Floor in
            let environment = workerEnvironment(name: "w", bus: "unix:path=/nonexistent")
            var spawned: [FloorProcess] = []
            spawned.reserveCapacity(count)
            let t0 = monotonicNanoseconds()
            do {
                for _ in 0..<count { spawned.append(try FloorProcess.spawn(argv, environment: environment, oneOutputPipe: true, watchExit: false)) }
            } catch {
                spawned.forEach { $0.killAndReap() }
                throw error
            }
            let t1 = monotonicNanoseconds()
            for p in spawned { _ = kill(p.pid, SIGTERM) }
            for p in spawned { p.reap() }
            let t2 = monotonicNanoseconds()
            return Floor(spawn: Double(t1 - t0) / 1e6, stop: Double(t2 - t1) / 1e6)
        }
    }

    struct Result {
        var start = 0.0, reloadAll = 0.0, reloadAllUnderReads = 0.0, reloadNone = 0.0, stop = 0.0, rss = 0.0, getId = 0.0
        var fds = 0
        var softLimit = "?"
        var getDuringReload = Samples()
        var signalsDuringReload = 0
        var listWorkers = Samples(), managedObjects = Samples(), busctlList = Samples(), busctlManaged = Samples(), busctlManagedQuiet = Samples(), busctlGetId = Samples()
    }

    static func throughDaemon(_ count: Int, softNofile: rlim_t) async throws -> Result {
        var r = Result()
        let timeout = Duration.seconds(60 + count / 20)
        // The daemon inherits the bench's limits: soft as systemd gives a service, hard the bench's.
        setOwnSoftNofile(softNofile)
        let started: BenchDaemon
        do {
            started = try await BenchDaemon.start(workerTables(count, prefix: "w", argv: argv), timeout: timeout)
        } catch {
            setOwnSoftNofile(rlim_t.max)
            throw error
        }
        setOwnSoftNofile(rlim_t.max)
        let d = started
        r.start = Double(d.readyAt - d.spawnedAt) / 1e6
        r.rss = ProcReading.residentKiB(d.pid) ?? .nan
        r.fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(d.pid)/fd").count) ?? -1
        r.softLimit = (try? String(contentsOfFile: "/proc/\(d.pid)/limits", encoding: .utf8))?
            .split(separator: "\n").first { $0.hasPrefix("Max open files") }?
            .split(separator: " ", omittingEmptySubsequences: true).dropFirst(3).prefix(2).joined(separator: ":") ?? "?"
        let pids = try await d.pids()
        let running = try await d.call("ListWorkers").first
        if case .array(_, let rows)? = running {
            let up = rows.filter { if case .structure(let f) = $0, f.count == 5 { f[1].stringValue == "running" } else { false } }.count
            guard up == count, pids.count == count else {
                await d.stop()
                throw BenchError("after READY=1 only \(up) of \(count) workers are running (log: \(d.logPath))")
            }
        }

        // Bus reads.
        let dbus = try! ObjectPath("/org/freedesktop/DBus")
        for _ in 0..<5 {
            var t = monotonicNanoseconds()
            _ = try await d.client.call(destination: "org.freedesktop.DBus", path: dbus, interface: "org.freedesktop.DBus", member: "GetId", arguments: [])
            var getId = Samples(); getId.addInterval(from: t, to: monotonicNanoseconds()); r.getId = r.getId == 0 ? getId.p50 : min(r.getId, getId.p50)
            t = monotonicNanoseconds()
            _ = try await d.call("ListWorkers")
            r.listWorkers.addInterval(from: t, to: monotonicNanoseconds())
            t = monotonicNanoseconds()
            _ = try await d.client.call(destination: Manager.name, path: Manager.path, interface: "org.freedesktop.DBus.ObjectManager",
                                        member: "GetManagedObjects", arguments: [], timeout: .seconds(60))
            r.managedObjects.addInterval(from: t, to: monotonicNanoseconds())
            let address = "--address=\(d.bus.unixAddress)"
            for (argv, into) in [(["busctl", address, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetId"], 0),
                                 (["busctl", address, "call", Manager.name, BgWorkerBus.managerPath, Manager.interface, "ListWorkers"], 1),
                                 (["busctl", address, "call", Manager.name, BgWorkerBus.managerPath, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects"], 2),
                                 (["busctl", address, "--quiet", "call", Manager.name, BgWorkerBus.managerPath, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects"], 3)] {
                t = monotonicNanoseconds()
                let out = try await TestSupport.run(argv, timeout: .seconds(60))
                guard out.status == 0 else { throw BenchError("\(argv.joined(separator: " ")): \(out.stderr)") }
                switch into {
                case 0: r.busctlGetId.addInterval(from: t, to: monotonicNanoseconds())
                case 1: r.busctlList.addInterval(from: t, to: monotonicNanoseconds())
                case 2: r.busctlManaged.addInterval(from: t, to: monotonicNanoseconds())
                default: r.busctlManagedQuiet.addInterval(from: t, to: monotonicNanoseconds())
                }
            }
        }

        // Reload changing none: the reply comes once it is applied.
        var t = monotonicNanoseconds()
        try await d.call("Reload", timeout: timeout)
        r.reloadNone = Double(monotonicNanoseconds() - t) / 1e6

        /// Rewrites every worker's program line to `program` and times a Reload from the call to
        /// the last of the N `running` signals; every worker must then have a new pid.
        func reloadChangingEvery(to program: [String]) async throws -> (milliseconds: Double, from: Int) {
            let before = try await d.pids()
            try d.rewrite(workerTables(count, prefix: "w", argv: program))
            let from = d.states.nextIndex
            let t = monotonicNanoseconds()
            try await d.call("Reload", timeout: timeout)
            let allRunning = try await d.waitForRunning(count: count, prefix: "w", from: from, timeout: timeout)
            let same = try await d.pids().filter { before[$0.key] == $0.value }.count
            guard same == 0 else { throw BenchError("\(same) workers kept their pid through a Reload that changed every worker") }
            return (Double(allRunning - t) / 1e6, from)
        }

        // Reload changing every worker, alone: what it costs the daemon.
        r.reloadAll = try await reloadChangingEvery(to: changedArgv).milliseconds

        // The same Reload back to the first program, while a client reads one worker's State, one
        // Get after the other (issue: < 50 ms p99). That client keeps a core busy (it, dbus-daemon
        // and the daemon's bus thread), so this Reload is timed apart from the one above.
        let client = d.client
        let path = try ObjectPath(BgWorkerBus.workerPath("w0001"))
        let reading = Task { () -> Samples in
            var samples = Samples()
            while !Task.isCancelled {
                let g = monotonicNanoseconds()
                guard (try? await client.call(destination: Manager.name, path: path, interface: "org.freedesktop.DBus.Properties", member: "Get",
                                              arguments: [.string(BgWorkerBus.workerInterface), .string("State")])) != nil else { break }
                samples.addInterval(from: g, to: monotonicNanoseconds())
            }
            return samples
        }
        let back: (milliseconds: Double, from: Int)
        do {
            back = try await reloadChangingEvery(to: argv)
        } catch {
            reading.cancel()
            throw error
        }
        reading.cancel()
        r.getDuringReload = await reading.value
        r.signalsDuringReload = d.states.nextIndex - back.from
        r.reloadAllUnderReads = back.milliseconds

        // SIGTERM -> exit.
        t = monotonicNanoseconds()
        d.process.signal(SIGTERM)
        _ = try await d.process.waitForExit(timeout: timeout)
        r.stop = Double(monotonicNanoseconds() - t) / 1e6
        await d.stop()
        return r
    }
}
