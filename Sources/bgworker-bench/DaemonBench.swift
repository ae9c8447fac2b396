// `daemon` (issue 3): bgworkerd with the process runner on a private bus. Crash to respawn,
// Enable/Disable, memory with 1/100/1000 workers, time to start 1000, idle wake-ups.
import ArgumentParser
import CShims
import DBus
import Foundation
import Glibc
import SystemSupport
import TestSupport

struct DaemonBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "bgworkerd (process runner): crash to respawn, Enable/Disable, RSS, start of 1000 workers, idle wake-ups.")

    @OptionGroup var common: CommonOptions

    @Option(help: "Crashes (SIGKILL of the worker) to measure.")
    var crashes = 200
    @Option(help: "Disable/Enable pairs to measure.")
    var toggles = 100
    @Option(help: "Workers for the start-time and memory figure.")
    var many = 1000
    @Option(help: "Seconds of the idle wake-up window.")
    var idleSeconds = 10

    struct Settings: Sendable {
        var crashes = 200
        var toggles = 100
        var many = 1000
        var idleSeconds = 10
    }

    func run() async throws {
        let settings = Settings(crashes: crashes, toggles: toggles, many: many, idleSeconds: idleSeconds)
        try await common.emit([try await Self.measure(settings)])
    }

    /// The worker program of every figure here: exec'd directly, no shell in between.
    static let worker = ["/bin/sleep", "1000"]

    static func measure(_ settings: Settings) async throws -> Section {
        var section = Section("daemon: bgworkerd with the process runner, private bus (issue 3)")
        let events: ProcessEvents?
        do { events = try ProcessEvents.start() } catch {
            events = nil
            section.notes.append("no kernel process events (\(error)): exec times are not measured, only the bus signals")
        }
        try await crashToRespawn(settings, events: events, into: &section)
        try await crashToRespawnWithDefaultDelay(settings, events: events, into: &section)
        try await respawnDuringADelayedFsync(settings, events: events, into: &section)
        try await enableDisable(settings, events: events, into: &section)
        try await memoryAndStart(settings, into: &section)
        section.notes.append("worker: `\(worker.joined(separator: " "))`, exec'd directly; daemon at its default log level (info: one line per state change, to a file)")
        if let lost = events?.lostEvents, lost > 0 {
            section.notes.append("WARNING: the kernel dropped \(lost) process-event batches (busy machine); exec figures may miss samples")
        }
        return section
    }

    // MARK: - Crash to respawn

    static func crashToRespawn(_ settings: Settings, events: ProcessEvents?, into section: inout Section) async throws {
        progress("daemon: crash to respawn, \(settings.crashes) crashes")
        let d = try await BenchDaemon.start(workerTables(1, prefix: "crasher", argv: worker,
                                                         extra: "restart-delay = 0\nstart-limit-burst = 0"))
        let name = "crasher0001"
        events?.watch(parent: d.pid)
        // The floor's notification: a signal from a second connection of ours to the same client.
        let notifier = try await DBusConnection.connect(.address(d.bus.unixAddress))
        let floorSignals = try await SignalLog(address: d.bus.unixAddress, MatchRule(interface: "org.example.BenchFloor", member: "Spawned"))
        defer { notifier.close() }

        var daemonToExec = Samples(), daemonToSignal = Samples()
        var floorToExec = Samples(), floorToSignal = Samples(), floorSpawnReturn = Samples()
        guard var pid = try await d.pids()[name], pid != 0 else { throw BenchError("\(name) does not run") }
        let environment = workerEnvironment(name: name, bus: d.bus.unixAddress)
        var floor = try FloorProcess.spawn(worker, environment: environment)
        let bench = getpid()
        events?.watch(parent: bench)

        for _ in 0..<settings.crashes {
            // The daemon: SIGKILL its worker; until the new process exec'd, and until the client
            // has the WorkerStateChanged running with the new pid.
            let from = d.states.nextIndex
            let t0 = monotonicNanoseconds()
            kill(pid_t(pid), SIGKILL)
            let (change, at) = try await d.waitForState(name, "running", from: from, notPid: pid)
            daemonToSignal.addInterval(from: t0, to: at)
            if let events {
                let exec = try await events.exec(childOf: d.pid, after: t0)
                daemonToExec.addInterval(from: t0, to: exec.timestamp)
            }
            pid = change.pid
            await pause(5)

            // The floor: the benchmark does what a supervisor must do at least (see the exit on a
            // pidfd, reap, spawn the same program the same way), then the same kind of
            // notification: a signal through the same bus to the same client.
            let old = floor
            let (f0, f1, next) = try await blocking { () throws -> (UInt64, UInt64, FloorProcess) in
                let f0 = monotonicNanoseconds()
                old.killAndReap(SIGKILL)
                let next = try FloorProcess.spawn(worker, environment: environment)
                return (f0, monotonicNanoseconds(), next)
            }
            floor = next
            floorSpawnReturn.addInterval(from: f0, to: f1)
            let signalFrom = floorSignals.nextIndex
            let emitted = monotonicNanoseconds()
            try notifier.emitSignal(path: try ObjectPath("/org/example/BenchFloor"), interface: "org.example.BenchFloor",
                                    member: "Spawned", arguments: [.uint32(UInt32(floor.pid))])
            let received = try await floorSignals.next(from: signalFrom, "the floor's signal") { _ in true }
            floorToSignal.add(Double(f1 - f0 + received.at - emitted) / 1_000_000)
            if let events {
                let exec = try await events.exec(childOf: bench, after: f0)
                floorToExec.addInterval(from: f0, to: exec.timestamp)
            }
            await pause(5)
        }
        floor.killAndReap()
        await d.stop()

        if events != nil {
            section.figures.append(Figure("crash -> new process exec'd", daemonToExec,
                                          baseline: ("floor: kill, reap, posix_spawn", floorToExec.p50), aim: "<= 1.5x"))
        }
        section.figures.append(Figure("crash -> WorkerStateChanged running", daemonToSignal,
                                      baseline: ("floor + bus signal", floorToSignal.p50), aim: "<= 1.5x"))
        if events != nil { section.figures.append(Figure("  floor: kill -> exec'd", floorToExec)) }
        section.figures.append(Figure("  floor: kill -> posix_spawn returned", floorSpawnReturn))
        section.figures.append(Figure("  floor: ... + signal received", floorToSignal))
        section.notes.append("crash: SIGKILL of the worker by the bench; restart-delay 0, start-limit-burst 0; 5 ms pause between events; exec times are the kernel's (proc connector), on the same CLOCK_MONOTONIC as the kill")
        section.notes.append("crash floor: the bench itself, on one thread: SIGKILL its own /bin/sleep, poll its pidfd, waitpid, posix_spawn the same argv with the daemon's kind of setup (own process group, default signals, stdin /dev/null, stdout/stderr pipes); for the signal figure, plus one signal from a second connection through the same bus to the same subscription")
    }

    // MARK: - Crash to respawn with the default restart delay, and during a slow state write

    /// As `crashToRespawn`, under the default restart policy (restart-delay 1 s): the configured
    /// delay is subtracted, so the figure is what the daemon adds to it (the timer's precision
    /// included). The floor is measured again in the same way.
    static func crashToRespawnWithDefaultDelay(_ settings: Settings, events: ProcessEvents?, into section: inout Section) async throws {
        guard let events else { return }
        let rounds = max(settings.crashes / 10, 5)
        progress("daemon: crash to respawn with the default restart delay, \(rounds) crashes")
        // stable-after 0: every crash restarts after the first delay (no backoff growth).
        let d = try await BenchDaemon.start(workerTables(1, prefix: "crasher", argv: worker,
                                                         extra: "stable-after = 0\nstart-limit-burst = 0"))
        let name = "crasher0001"
        events.watch(parent: d.pid)
        let bench = getpid()
        events.watch(parent: bench)
        let environment = workerEnvironment(name: name, bus: d.bus.unixAddress)
        let delay: UInt64 = 1_000_000_000
        var daemonToExec = Samples(), floorToExec = Samples(), timedFloorToExec = Samples()
        guard var pid = try await d.pids()[name], pid != 0 else { throw BenchError("\(name) does not run") }
        var floor = try FloorProcess.spawn(worker, environment: environment)
        for _ in 0..<rounds {
            let from = d.states.nextIndex
            let t0 = monotonicNanoseconds()
            kill(pid_t(pid), SIGKILL)
            let (change, _) = try await d.waitForState(name, "running", from: from, notPid: pid, timeout: .seconds(10))
            let exec = try await events.exec(childOf: d.pid, after: t0)
            daemonToExec.add(Double(Int64(exec.timestamp) - Int64(t0) - Int64(delay)) / 1_000_000)
            pid = change.pid
            await pause(5)
            let old = floor
            let (f0, next) = try await blocking { () throws -> (UInt64, FloorProcess) in
                let f0 = monotonicNanoseconds()
                old.killAndReap(SIGKILL)
                return (f0, try FloorProcess.spawn(worker, environment: environment))
            }
            floor = next
            let exec2 = try await events.exec(childOf: bench, after: f0)
            floorToExec.addInterval(from: f0, to: exec2.timestamp)
            await pause(5)
            // The same with the delay: kill, reap, sleep until 1 s after the reap (an absolute
            // CLOCK_MONOTONIC deadline, as a timerfd is armed), spawn; minus 1 s.
            let older = floor
            let (g0, timed) = try await blocking { () throws -> (UInt64, FloorProcess) in
                let g0 = monotonicNanoseconds()
                older.killAndReap(SIGKILL)
                let due = monotonicNanoseconds() + delay
                var deadline = timespec(tv_sec: Int(due / 1_000_000_000), tv_nsec: Int(due % 1_000_000_000))
                while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, nil) == EINTR {}
                return (g0, try FloorProcess.spawn(worker, environment: environment))
            }
            floor = timed
            let exec3 = try await events.exec(childOf: bench, after: g0)
            timedFloorToExec.add(Double(Int64(exec3.timestamp) - Int64(g0) - Int64(delay)) / 1_000_000)
            await pause(5)
        }
        floor.killAndReap()
        await d.stop()
        section.figures.append(Figure("crash -> exec'd, restart-delay 1 s (delay excluded)", daemonToExec,
                                      baseline: ("floor: kill, reap, posix_spawn", floorToExec.p50), aim: "<= 1.5x"))
        section.figures.append(Figure("crash -> exec'd, restart-delay 1 s (timed floor)", daemonToExec,
                                      baseline: ("floor: kill, reap, 1 s sleep, posix_spawn", timedFloorToExec.p50), aim: "-"))
        section.figures.append(Figure("  floor: kill, reap, 1 s sleep, spawn (delay excluded)", timedFloorToExec))
        section.notes.append("default delay: restart-delay 1 s (the default), stable-after 0 so that every crash waits the first delay; the figure is kill -> exec'd minus 1 s; the timed floor: the bench kills and reaps its own process, sleeps until 1 s after the reap (clock_nanosleep, absolute CLOCK_MONOTONIC), spawns, minus 1 s: the wake-up of a thread after a 1 s sleep is part of any delayed restart")
    }

    /// Issue 9: the state file is written off the event loop. With every fsync of the daemon
    /// delayed by 200 ms (an LD_PRELOAD shim the bench builds; no code of the daemon knows of
    /// it), a crash of another worker while Disable/Enable waits for its write must respawn as
    /// fast as a crash with no write in flight.
    static func respawnDuringADelayedFsync(_ settings: Settings, events: ProcessEvents?, into section: inout Section) async throws {
        guard let events else { return }
        let rounds = max(settings.crashes / 10, 10)
        progress("daemon: crash to respawn while a state write waits 200 ms in fsync, \(rounds) rounds")
        let shim: String
        do { shim = try await buildFsyncDelayShim() } catch {
            section.notes.append("no fsync-delay figure: \(error)")
            return
        }
        let d = try await BenchDaemon.start(
            workerTables(1, prefix: "crasher", argv: worker, extra: "restart-delay = 0\nstart-limit-burst = 0")
                + workerTables(1, prefix: "toggler", argv: worker),
            environment: ["LD_PRELOAD": shim, "BGW_BENCH_FSYNC_DELAY_MS": "200"])
        let name = "crasher0001"
        events.watch(parent: d.pid)
        var plain = Samples(), duringWrite = Samples(), requestTook = Samples()
        guard var pid = try await d.pids()[name], pid != 0 else { throw BenchError("\(name) does not run") }
        func crash() async throws -> Double {
            let from = d.states.nextIndex
            let t0 = monotonicNanoseconds()
            kill(pid_t(pid), SIGKILL)
            let (change, _) = try await d.waitForState(name, "running", from: from, notPid: pid)
            let exec = try await events.exec(childOf: d.pid, after: t0)
            pid = change.pid
            return Double(exec.timestamp - t0) / 1_000_000
        }
        for round in 0..<rounds {
            plain.add(try await crash())
            await pause(5)
            let member = round.isMultiple(of: 2) ? "Disable" : "Enable"
            let r0 = monotonicNanoseconds()
            let request = Task { try await d.call(member, [.string("toggler0001")]) }
            await pause(20)  // the write is in its (delayed) fsync now
            duringWrite.add(try await crash())
            _ = try await request.value
            requestTook.addInterval(from: r0, to: monotonicNanoseconds())
            await pause(5)
        }
        await d.stop()
        section.figures.append(Figure("crash -> exec'd while a state write is in fsync (+200 ms)", duringWrite,
                                      baseline: ("crash -> exec'd, no write", plain.p50), aim: "<= +1 ms"))
        section.figures.append(Figure("  no write in flight", plain))
        section.figures.append(Figure("  Disable/Enable -> reply, fsync +200 ms", requestTook))
        section.notes.append("fsync delay: every fsync/fdatasync of bgworkerd sleeps 200 ms first (LD_PRELOAD shim built by the bench); a Disable or Enable of another worker is sent, and 20 ms later (its state write in fsync) the crasher is SIGKILLed; the aim is a p50 within 1 ms of the crash with no write in flight")
    }

    /// Compiles the shim (cc) into a temporary folder: fsync and fdatasync sleep for
    /// $BGW_BENCH_FSYNC_DELAY_MS first, then do the real call.
    static func buildFsyncDelayShim() async throws -> String {
        let directory = try Interrupt.directory(prefix: "bgw-fsync-shim")
        let source = directory.file("fsync_delay.c"), library = directory.file("fsync_delay.so")
        try """
            #define _GNU_SOURCE
            #include <dlfcn.h>
            #include <stdlib.h>
            #include <time.h>
            static void delay(void) {
                const char *ms = getenv("BGW_BENCH_FSYNC_DELAY_MS");
                if (!ms) return;
                long n = atol(ms);
                struct timespec t = { n / 1000, (n % 1000) * 1000000L };
                while (nanosleep(&t, &t) != 0) {}
            }
            int fsync(int fd) { delay(); int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync"); return real(fd); }
            int fdatasync(int fd) { delay(); int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync"); return real(fd); }
            """.write(toFile: source, atomically: true, encoding: .utf8)
        let compiler = try ChildProcess(["cc", "-shared", "-fPIC", "-O2", "-o", library, source, "-ldl"],
                                        captureStdout: false, captureStderr: false)
        guard try await compiler.waitForExit(timeout: .seconds(60)) == 0 else { throw BenchError("cc could not build the fsync shim") }
        return library
    }

    // MARK: - Enable / Disable

    static func enableDisable(_ settings: Settings, events: ProcessEvents?, into section: inout Section) async throws {
        progress("daemon: Enable/Disable, \(settings.toggles) pairs")
        let d = try await BenchDaemon.start(workerTables(1, prefix: "toggler", argv: worker))
        let name = "toggler0001"
        events?.watch(parent: d.pid)
        let bench = getpid()
        events?.watch(parent: bench)
        var disableReply = Samples(), disableGone = Samples(), enableReply = Samples(), enableExec = Samples()
        var floorDisable = Samples(), floorEnable = Samples(), floorDurableEnable = Samples(), floorDurableDisable = Samples()
        // The contract's own cost: an intent is on disk before it is acted on (StateNotSaved must
        // change nothing). This floor writes a file of the state file's size in the same folder
        // as the daemon does (write, fsync, rename, fsync the folder) between GetId and the spawn.
        let stateFolder = d.directory.file("state")
        let stateBytes = (try? String(contentsOfFile: stateFolder + "/enable-state", encoding: .utf8).utf8.count) ?? 64
        let durableWrite: @Sendable () throws -> Void = { try durableReplace(stateFolder + "/bench-floor", bytes: max(stateBytes, 64)) }
        let environment = workerEnvironment(name: name, bus: d.bus.unixAddress)
        let bus = d.client
        let getID: @Sendable () async throws -> Void = {
            _ = try await bus.call(destination: "org.freedesktop.DBus", path: try ObjectPath("/org/freedesktop/DBus"),
                                   interface: "org.freedesktop.DBus", member: "GetId")
        }
        for _ in 0..<settings.toggles {
            guard let pid = try await d.pids()[name], pid != 0 else { throw BenchError("\(name) does not run") }
            let pidfd = _bgw_pidfd_open(pid_t(pid), 0)
            guard pidfd >= 0 else { throw BenchError("pidfd_open(\(pid)): \(errno)") }
            let t0 = monotonicNanoseconds()
            async let gone = blocking { waitGone(pidfd: pidfd, timeout: .seconds(30)) }
            try await d.call("Disable", [.string(name)])
            disableReply.addInterval(from: t0, to: monotonicNanoseconds())
            let goneAt = try await gone
            close(pidfd)
            if let exit = await events?.exitTime(of: pid_t(pid)) { disableGone.addInterval(from: t0, to: exit) }
            else if let goneAt { disableGone.addInterval(from: t0, to: goneAt) }
            await pause(5)

            let t1 = monotonicNanoseconds()
            try await d.call("Enable", [.string(name)])
            enableReply.addInterval(from: t1, to: monotonicNanoseconds())
            if let events {
                let exec = try await events.exec(childOf: d.pid, after: t1)
                enableExec.addInterval(from: t1, to: exec.timestamp)
            }
            await pause(5)

            // Floors: one bus round trip (GetId) plus the least a process manager does.
            let f0 = monotonicNanoseconds()
            try await getID()
            let spawned = try await blocking { () throws -> (FloorProcess, UInt64) in
                let p = try FloorProcess.spawn(worker, environment: environment)
                return (p, monotonicNanoseconds())
            }
            floorEnable.addInterval(from: f0, to: spawned.1)
            await pause(5)
            let f1 = monotonicNanoseconds()
            try await getID()
            let stoppedAt = try await blocking { () -> UInt64 in
                spawned.0.killAndReap(SIGTERM)
                return monotonicNanoseconds()
            }
            floorDisable.addInterval(from: f1, to: stoppedAt)
            await pause(5)

            let g0 = monotonicNanoseconds()
            try await getID()
            let durablySpawned = try await blocking { () throws -> (FloorProcess, UInt64) in
                try durableWrite()
                let p = try FloorProcess.spawn(worker, environment: environment)
                return (p, monotonicNanoseconds())
            }
            floorDurableEnable.addInterval(from: g0, to: durablySpawned.1)
            await pause(5)
            let g1 = monotonicNanoseconds()
            try await getID()
            let durablyStoppedAt = try await blocking { () throws -> UInt64 in
                try durableWrite()
                durablySpawned.0.killAndReap(SIGTERM)
                return monotonicNanoseconds()
            }
            floorDurableDisable.addInterval(from: g1, to: durablyStoppedAt)
            await pause(5)
        }
        await d.stop()
        section.figures.append(Figure("Enable -> reply (running)", enableReply,
                                      baseline: ("GetId + posix_spawn", floorEnable.p50), aim: "-"))
        if events != nil {
            section.figures.append(Figure("Enable -> process exec'd", enableExec,
                                          baseline: ("GetId + posix_spawn", floorEnable.p50), aim: "-"))
            section.figures.append(Figure("Enable -> process exec'd (durable floor)", enableExec,
                                          baseline: ("GetId + state write + posix_spawn", floorDurableEnable.p50), aim: "<= 1.2x"))
        }
        section.figures.append(Figure("Disable -> reply", disableReply,
                                      baseline: ("GetId + SIGTERM, reap", floorDisable.p50), aim: "-"))
        section.figures.append(Figure("Disable -> process gone", disableGone,
                                      baseline: ("GetId + SIGTERM, reap", floorDisable.p50), aim: "-"))
        section.figures.append(Figure("Disable -> process gone (durable floor)", disableGone,
                                      baseline: ("GetId + state write + SIGTERM, reap", floorDurableDisable.p50), aim: "<= 1.2x"))
        section.figures.append(Figure("  floor: GetId + posix_spawn", floorEnable))
        section.figures.append(Figure("  floor: GetId + SIGTERM, reap", floorDisable))
        section.figures.append(Figure("  floor: GetId + state write + posix_spawn", floorDurableEnable))
        section.figures.append(Figure("  floor: GetId + state write + SIGTERM, reap", floorDurableDisable))
        section.notes.append("Enable/Disable: the manager's methods called by our client (the bench's DBus connection); 'gone' is the kernel's exit event of the old pid (else its pidfd becoming readable); floor: a GetId round trip on the same bus plus the bench spawning (or SIGTERMing and reaping) the same program; durable floor: the same with, before the spawn (or the SIGTERM), the write the contract requires first: a file of the state file's size replaced in the daemon's state folder as the daemon does it (write, fsync, rename, fsync the folder)")
    }

    // MARK: - Memory, start of many, idle wake-ups

    static func memoryAndStart(_ settings: Settings, into section: inout Section) async throws {
        let many = settings.many
        progress("daemon: memory and start of \(many) workers")
        // 1 worker, then one Reload that adds `many`.
        let one = workerTables(1, prefix: "w", argv: worker)
        let d1 = try await BenchDaemon.start(one)
        let rss1 = ProcReading.residentKiB(d1.pid) ?? .nan
        try d1.rewrite(one + workerTables(many, prefix: "r", argv: worker))
        let from = d1.states.nextIndex
        let r0 = monotonicNanoseconds()
        try await d1.call("Reload")
        let reloadReply = monotonicNanoseconds()
        let allRunning = try await d1.waitForRunning(count: many, prefix: "r", from: from, timeout: .seconds(120))
        let rssAfterReload = ProcReading.residentKiB(d1.pid) ?? .nan
        let s0 = monotonicNanoseconds()
        await d1.stop()
        let stopped = monotonicNanoseconds()

        // 100 workers from the start: memory, then the idle window.
        progress("daemon: 100 idle workers for \(settings.idleSeconds) s")
        let d2 = try await BenchDaemon.start(workerTables(100, prefix: "w", argv: worker))
        let rss100 = ProcReading.residentKiB(d2.pid) ?? .nan
        // Let the start's last messages and log lines drain before the window opens.
        await pause(1000)
        let wake = try await idleWakeups(daemon: d2.pid, bus: d2.bus.process.pid, seconds: settings.idleSeconds)
        await d2.stop()

        // `many` workers from the start: time until READY=1 (every start answered).
        progress("daemon: start with \(many) workers")
        let d3 = try await BenchDaemon.start(workerTables(many, prefix: "w", argv: worker), timeout: .seconds(120))
        let (t0, ready) = (d3.spawnedAt, d3.readyAt)
        let rssMany = ProcReading.residentKiB(d3.pid) ?? .nan
        let notifications = d3.notify.counts
        await d3.stop()

        // Floor: the bench spawning as many of the same workers, one after the other.
        let floorStart = try await blocking { () throws -> Double in
            let environment = workerEnvironment(name: "w", bus: "unix:path=/nonexistent")
            let start = monotonicNanoseconds()
            var spawned: [FloorProcess] = []
            spawned.reserveCapacity(many)
            for _ in 0..<many { spawned.append(try FloorProcess.spawn(worker, environment: environment)) }
            let took = Double(monotonicNanoseconds() - start) / 1_000_000
            for p in spawned { _ = _bgw_pidfd_send_signal(p.pidfd, SIGKILL) }
            for p in spawned { p.reap() }
            return took
        }

        section.figures.append(Figure("start \(many) workers (daemon start -> READY=1)", unit: "ms",
                                      value: Double(ready - t0) / 1_000_000,
                                      baseline: ("bench spawns \(many)", floorStart),
                                      note: "sd_notify messages until then: \(notifications.messages), \(notifications.status) with STATUS="))
        section.figures.append(Figure("Reload adding \(many) -> all running", unit: "ms",
                                      value: Double(allRunning - r0) / 1_000_000,
                                      baseline: ("bench spawns \(many)", floorStart),
                                      note: "the Reload reply came after \(String(format: "%.1f", Double(reloadReply - r0) / 1_000_000)) ms"))
        section.figures.append(Figure("SIGTERM -> exit with \(many + 1) workers", unit: "ms", value: Double(stopped - s0) / 1_000_000))
        section.figures.append(Figure("RSS, 1 worker", unit: "KiB", value: rss1))
        section.figures.append(Figure("RSS, 100 workers", unit: "KiB", value: rss100, baseline: ("1 worker", rss1)))
        section.figures.append(Figure("RSS, \(many) workers", unit: "KiB", value: rssMany, baseline: ("1 worker", rss1),
                                      note: String(format: "%.1f KiB per added worker", (rssMany - rss1) / Double(many - 1))))
        section.figures.append(Figure("RSS, 1 + \(many) after Reload", unit: "KiB", value: rssAfterReload, baseline: ("1 worker", rss1)))
        section.figures.append(Figure("idle wake-ups, 100 workers, \(settings.idleSeconds) s", unit: "count",
                                      value: Double(wake.daemon), baseline: ("dbus-daemon, same window", Double(wake.bus)),
                                      aim: "0", note: wake.detail))
        section.notes.append("RSS: VmRSS of bgworkerd from /proc right after READY=1 (or after the last running signal); ratio against the daemon with 1 worker")
        section.notes.append("wake-ups: voluntary + nonvoluntary context switches summed over every thread of bgworkerd (/proc/PID/task/*/status), from 1 s after READY=1, over the window, plus one for each thread that ended in the window; nothing talks to the daemon meanwhile")
    }

    struct Wakeups {
        var daemon: Int
        var bus: Int
        var detail: String
    }

    /// Context switches of every thread of `daemon` (and of the bus daemon, the baseline) over
    /// the window; the detail names each thread that woke.
    static func idleWakeups(daemon: pid_t, bus: pid_t, seconds: Int) async throws -> Wakeups {
        let before = ProcReading.switches(daemon), busBefore = ProcReading.switches(bus)
        try await Task.sleep(for: .seconds(seconds))
        let after = ProcReading.switches(daemon), busAfter = ProcReading.switches(bus)
        func total(_ a: [Int32: ProcReading.ThreadSwitches], _ b: [Int32: ProcReading.ThreadSwitches]) -> Int {
            b.values.reduce(0) { $0 + $1.total - (a[$1.tid]?.total ?? 0) }
        }
        var woke: [String] = []
        for t in after.values.sorted(by: { $0.tid < $1.tid }) {
            let delta = t.total - (before[t.tid]?.total ?? 0)
            if delta > 0 || before[t.tid] == nil {
                woke.append("\(t.name)[\(t.tid)]: +\(delta)\(before[t.tid] == nil ? " (new thread)" : "")")
            }
        }
        // A thread that ended during the window woke at least once to end (its last count is gone).
        let ended = before.keys.filter { after[$0] == nil }.map { "\(before[$0]?.name ?? "?")[\($0)]: ended" }
        let detail = woke.isEmpty && ended.isEmpty
            ? "no thread of \(after.count) woke"
            : "threads: \(after.count); " + (woke + ended).joined(separator: ", ")
        return Wakeups(daemon: total(before, after) + ended.count, bus: total(busBefore, busAfter), detail: detail)
    }
}

/// Replaces `path` with `bytes` bytes the way the daemon's StateStore does (write a temporary
/// file, fsync, rename, fsync the folder): the floor of a persisted intent.
func durableReplace(_ path: String, bytes count: Int) throws {
    let temporary = path + ".tmp"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw BenchError("open \(temporary): \(errno)") }
    defer { close(fd) }
    let bytes = [UInt8](repeating: UInt8(ascii: "x"), count: count)
    guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == count, fsync(fd) == 0,
          rename(temporary, path) == 0 else { throw BenchError("durable write of \(path): \(errno)") }
    let folder = open(String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)]), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard folder >= 0 else { return }
    _ = fsync(folder)
    close(folder)
}
