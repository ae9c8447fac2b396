// `soak` (issue 8): bgworkerd respawning crash-looping workers for minutes. Respawns per second
// sustained, and bgworkerd's RSS and open fds at the start and the end: a leak of a few bytes per
// spawn shows over a million spawns.
import ArgumentParser
import BgWorkerAPI
import CShims
import DBus
import Foundation
import Glibc
import SystemSupport
import TestSupport

struct SoakBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soak",
        abstract: "bgworkerd (process runner) respawning /bin/true workers for a while: respawns/s, RSS and fds at start and end.")

    @OptionGroup var common: CommonOptions

    @Option(help: "Seconds of the measured window (after the warm-up).")
    var seconds = 600
    @Option(help: "Crash-looping workers (/bin/true, restart-delay 0, start-limit-burst 0).")
    var workers = 4
    @Option(help: "Seconds of respawning before the window opens (the start figures are read then).")
    var warmup = 10
    @Option(name: .customLong("floor-seconds"), help: "Seconds of the floor's spawn+reap loop, before and again after the soak.")
    var floorSeconds = 10
    @Option(name: .customLong("log-level"), help: "The daemon's [daemon] log-level (default: its own default, info).")
    var logLevel: String?

    struct Settings: Sendable {
        var seconds = 600
        var workers = 4
        var warmup = 10
        var floorSeconds = 10
        var logLevel: String?
    }

    func run() async throws {
        let settings = Settings(seconds: seconds, workers: workers, warmup: warmup, floorSeconds: floorSeconds,
                                logLevel: logLevel)
        let context = RunContext.now()  // the load before a 10-minute run, not after it
        try await common.emit([try await Self.measure(settings)], context: context)
    }

    static let worker = ["/bin/true"]

    /// What is read of bgworkerd at one moment.
    struct Reading {
        var at: UInt64
        var residentKiB: Double
        var fds: Int
        /// CPU seconds (user + system) of the whole process so far.
        var cpu: Double
        /// Exits of its children the kernel reported so far (nil without process events).
        var exits: Int?
        /// The sum of the workers' `Restarts` properties (the daemon's own count).
        var restarts: Int

        var seconds: Double { Double(at) / 1e9 }
    }

    static func measure(_ settings: Settings) async throws -> Section {
        var section = Section("soak: bgworkerd respawning \(settings.workers) crash-looping workers for \(settings.seconds) s (issue 8)")
        let events: ProcessEvents?
        do { events = try ProcessEvents.start() } catch {
            events = nil
            section.notes.append("no kernel process events (\(error)): respawns are the daemon's own count (the workers' Restarts)")
        }

        progress("soak: floor, \(settings.floorSeconds) s of spawn+reap of /bin/true")
        let floorBefore = try await floorRate(seconds: settings.floorSeconds)

        let names = (1...max(settings.workers, 1)).map { "soak" + String(format: "%04d", $0) }
        // The log goes nowhere (a million spawns would write gigabytes), but is still written at
        // the default level: the daemon formats every line as in production. No client subscribes
        // to the state signals (a rule that matches none), so the bench does not compete for CPU
        // with a signal per state change; dbus-daemon still routes every one.
        let d = try await BenchDaemon.start(
            workerTables(settings.workers, prefix: "soak", argv: worker, extra: "restart-delay = 0\nstart-limit-burst = 0"),
            states: MatchRule(interface: Manager.interface, member: BgWorkerBus.Signal.workerStateChanged, arguments: [0: "-none-"]),
            logFile: "/dev/null")
        // Over the bus (the LogLevel property): BenchDaemon writes the [daemon] table itself.
        if let level = settings.logLevel {
            _ = try await d.client.call(destination: Manager.name, path: Manager.path, interface: "org.freedesktop.DBus.Properties",
                                    member: "Set", arguments: [.string(Manager.interface), .string("LogLevel"), .variant(.string(level))])
        }
        events?.countExits(ofChildrenOf: d.pid)
        let spawnedBefore = events?.exitCount(ofChildrenOf: d.pid) ?? 0

        progress("soak: warm-up, \(settings.warmup) s")
        try await Task.sleep(for: .seconds(settings.warmup))
        let first = try await read(d, names: names, events: events)
        var last = first
        var peakKiB = first.residentKiB
        var peakFds = first.fds
        var died: String?
        // Halfway: growth from here on tells a leak (about half the total) from a plateau (none).
        var middle: Reading?
        let end = ContinuousClock.now + .seconds(settings.seconds)
        progress("soak: \(settings.seconds) s; RSS \(Int(first.residentKiB)) KiB, \(first.fds) fds")
        while ContinuousClock.now < end {
            try await Task.sleep(for: min(.seconds(10), end - ContinuousClock.now))
            if d.process.hasExited {
                died = "bgworkerd exited (wait status \(try await d.process.waitForExit())) after \(Int(last.seconds - first.seconds)) s"
                break
            }
            let now = try await read(d, names: names, events: events)
            peakKiB = max(peakKiB, now.residentKiB)
            peakFds = max(peakFds, now.fds)
            let count = (now.exits ?? now.restarts) - (first.exits ?? first.restarts)
            progress(String(format: "soak: %4.0f s, %d respawns (%.0f/s), RSS %.0f KiB, %d fds", now.seconds - first.seconds,
                            count, Double(count) / (now.seconds - first.seconds), now.residentKiB, now.fds))
            last = now
            if middle == nil, now.seconds - first.seconds >= Double(settings.seconds) / 2 { middle = now }
        }
        if died == nil { last = try await read(d, names: names, events: events) }
        await d.stop()

        progress("soak: floor again, \(settings.floorSeconds) s")
        let floorAfter = try await floorRate(seconds: settings.floorSeconds)
        let floor = (floorBefore + floorAfter) / 2

        let window = last.seconds - first.seconds
        let respawns = (last.exits ?? last.restarts) - (first.exits ?? first.restarts)
        let rate = Double(respawns) / window
        let total = (last.exits.map { $0 - spawnedBefore }) ?? last.restarts
        if let died { section.notes.append("FAILED: \(died)") }
        section.figures.append(Figure("respawns/s sustained, \(settings.workers) workers", unit: "1/s", value: rate,
                                      direction: .higherIsBetter, baseline: ("floor: spawn+reap /bin/true", floor),
                                      aim: ">= 1667/s",
                                      note: String(format: "%d respawns in %.0f s (%d since the daemon started)", respawns, window, total)))
        section.figures.append(Figure("  floor before / after the soak", unit: "1/s", value: floorBefore,
                                      note: String(format: "after: %.0f/s", floorAfter)))
        if let exits = last.exits, let firstExits = first.exits {
            let counted = last.restarts - first.restarts
            section.notes.append("respawns: exits of bgworkerd's children from the kernel's process events (\(exits - firstExits) in the window); the daemon's own count (sum of the workers' Restarts) says \(counted)")
        }
        section.figures.append(Figure("RSS at the start (after \(settings.warmup) s warm-up)", unit: "KiB", value: first.residentKiB))
        section.figures.append(Figure("RSS at the end", unit: "KiB", value: last.residentKiB, baseline: ("start", first.residentKiB),
                                      note: String(format: "peak %.0f KiB (sampled every 10 s)", peakKiB)))
        section.figures.append(Figure("RSS growth", unit: "KiB", value: last.residentKiB - first.residentKiB, aim: "< 1024 KiB",
                                      note: String(format: "%.3f bytes per respawn", (last.residentKiB - first.residentKiB) * 1024 / Double(max(respawns, 1)))))
        if let middle {
            section.figures.append(Figure("RSS growth, second half of the window", unit: "KiB",
                                          value: last.residentKiB - middle.residentKiB,
                                          note: String(format: "from %.0f KiB at %.0f s; a leak grows about as much as in the first half, a plateau not at all",
                                                       middle.residentKiB, middle.seconds - first.seconds)))
        }
        section.figures.append(Figure("open fds at the start", unit: "count", value: Double(first.fds)))
        section.figures.append(Figure("open fds at the end", unit: "count", value: Double(last.fds), baseline: ("start", Double(first.fds)),
                                      note: "peak \(peakFds)"))
        let cpu = last.cpu - first.cpu
        section.figures.append(Figure("bgworkerd CPU per respawn", unit: "us", value: cpu / Double(max(respawns, 1)) * 1e6,
                                      note: String(format: "%.1f CPU s over %.0f s (%.0f%% of one core)", cpu, window, cpu / window * 100)))
        section.notes.append("workers: `/bin/true` exec'd directly, restart-delay 0, start-limit-burst 0; daemon log level \(settings.logLevel ?? "info (its default)"), its output to /dev/null; no client subscribed to its signals")
        section.notes.append("floor: the bench on one thread, spawn (posix_spawn with the runner's kind of setup: own process group, default signals, stdin /dev/null, stdout/stderr pipes) and reap /bin/true in a loop, \(settings.floorSeconds) s before and after the soak; the baseline is their mean. The daemon's workers respawn in parallel (several workers), the floor one at a time")
        section.notes.append("RSS: VmRSS of bgworkerd; fds: entries of /proc/PID/fd; aim from the issue: 1,000,000 respawns in 10 minutes (1,667/s), RSS growth under 1 MiB")
        return section
    }

    static func read(_ d: BenchDaemon, names: [String], events: ProcessEvents?) async throws -> Reading {
        var restarts = 0
        for name in names {
            let reply = try await d.client.call(
                destination: Manager.name, path: try ObjectPath(BgWorkerBus.workerPath(name)),
                interface: "org.freedesktop.DBus.Properties", member: "Get",
                arguments: [.string(BgWorkerBus.workerInterface), .string(BgWorkerBus.WorkerProperty.restarts)])
            guard case .variant(let value)? = reply.first, let count = value.uint32Value else {
                throw BenchError("Restarts of \(name): unexpected reply \(reply)")
            }
            restarts += Int(count)
        }
        let pid = d.pid
        return Reading(at: monotonicNanoseconds(), residentKiB: ProcReading.residentKiB(pid) ?? .nan,
                       fds: ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).count,
                       cpu: cpuSeconds(pid), exits: events?.exitCount(ofChildrenOf: pid), restarts: restarts)
    }

    /// utime + stime of a process (fields 14 and 15 of /proc/PID/stat), in seconds.
    static func cpuSeconds(_ pid: pid_t) -> Double {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return .nan }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return .nan }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Spawns and reaps /bin/true back to back for `seconds`; returns spawns per second.
    static func floorRate(seconds: Int) async throws -> Double {
        try await blocking { () throws -> Double in
            let environment = workerEnvironment(name: "soak", bus: "unix:path=/nonexistent")
            let start = monotonicNanoseconds()
            let end = start + UInt64(seconds) * 1_000_000_000
            var count = 0
            var now = start
            while now < end {
                try FloorProcess.spawn(worker, environment: environment).reap()
                count += 1
                now = monotonicNanoseconds()
            }
            return Double(count) / (Double(now - start) / 1e9)
        }
    }
}
