// `systemd` (issue 5; root): inside a private systemd 252 (TestSupport.SystemdNamespace), crash to
// respawn and Enable/Disable through bgworkerd --runner systemd and --runner process, beside
// systemd's own Restart=always RestartSec=0 of the same program in a transient unit.
import ArgumentParser
import BgWorkerAPI
import CShims
import DBus
import Foundation
import Glibc
import SystemSupport
import TestSupport

struct SystemdBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "systemd",
        abstract: "Crash to respawn and Enable/Disable: bgworkerd with the systemd and process runners vs. systemd's own Restart=always (root).")

    @OptionGroup var common: CommonOptions

    @Option(help: "Crashes per variant.")
    var crashes = 100
    @Option(help: "Disable/Enable pairs per runner.")
    var toggles = 30

    struct Settings: Sendable {
        var crashes = 100
        var toggles = 30
    }

    func run() async throws {
        try await common.emit([try await Self.measure(Settings(crashes: crashes, toggles: toggles))])
    }

    static let worker = DaemonBenchmark.worker

    static func measure(_ settings: Settings) async throws -> Section {
        var section = Section("systemd: bgworkerd in a systemd 252 namespace vs. systemd's own Restart=always (issue 5)")
        guard isRoot else {
            section.skipped = "needs root: PID and mount namespaces for a private systemd"
            return section
        }
        let events = try ProcessEvents.start()
        return try await withBenchNamespace("systemd") { ns, directory in
            events.watch(parent: ns.systemdPid)
            let native = try await systemdOwn(ns, settings, events: events)
            var results: [String: RunnerResult] = [:]
            for runner in ["systemd", "process"] {
                progress("systemd: bgworkerd --runner \(runner)")
                results[runner] = try await throughDaemon(ns, runner: runner, directory: directory, settings, events: events)
            }
            var s = section
            let floor = native.toExec.p50
            for runner in ["systemd", "process"] {
                guard let r = results[runner] else { continue }
                s.figures.append(Figure("--runner \(runner): crash -> exec'd", r.toExec,
                                        baseline: ("systemd Restart=always", floor), aim: "<= 2x"))
                s.figures.append(Figure("--runner \(runner): crash -> WorkerStateChanged running", r.toSignal,
                                        baseline: ("systemd: -> PropertiesChanged MainPID", native.toSignal.p50)))
            }
            s.figures.append(Figure("systemd Restart=always: crash -> exec'd", native.toExec))
            s.figures.append(Figure("systemd Restart=always: crash -> PropertiesChanged MainPID", native.toSignal))
            for runner in ["systemd", "process"] {
                guard let r = results[runner] else { continue }
                s.figures.append(Figure("--runner \(runner): Enable -> reply", r.enableReply,
                                        baseline: r === results["process"] ? nil : ("--runner process", results["process"]?.enableReply.p50 ?? .nan)))
                s.figures.append(Figure("--runner \(runner): Enable -> exec'd", r.enableExec))
                s.figures.append(Figure("--runner \(runner): Disable -> reply", r.disableReply,
                                        baseline: r === results["process"] ? nil : ("--runner process", results["process"]?.disableReply.p50 ?? .nan)))
            }
            s.notes.append("all three run the same worker (`\(worker.joined(separator: " "))`) inside the same systemd 252 namespace; bgworkerd runs there too (nsenter), serving on a private dbus-daemon whose socket is under /var/lib (outside the namespace's private /tmp and /run)")
            s.notes.append("crash: SIGKILL of the worker's process by the bench (its pid outside the namespace); exec'd is the kernel's exec event of a new child of systemd (or of bgworkerd for the process runner), on the kill's clock; \(settings.crashes) crashes per variant, 5 ms apart")
            s.notes.append("systemd's own: a transient service with ExecStart=/bin/sleep 1000, Restart=always, RestartUSec=0, StartLimitIntervalUSec=0 (no start limit); its new MainPID is awaited as the unit's PropertiesChanged (after Subscribe)")
            s.notes.append("bgworkerd workers: restart-delay 0, start-limit-burst 0; \(settings.toggles) Disable/Enable pairs per runner")
            if events.lostEvents > 0 { s.notes.append("WARNING: the kernel dropped \(events.lostEvents) process-event batches") }
            return s
        }
    }

    final class RunnerResult: Sendable {
        let toExec: Samples, toSignal: Samples, enableReply: Samples, enableExec: Samples, disableReply: Samples
        init(toExec: Samples, toSignal: Samples, enableReply: Samples, enableExec: Samples, disableReply: Samples) {
            self.toExec = toExec
            self.toSignal = toSignal
            self.enableReply = enableReply
            self.enableExec = enableExec
            self.disableReply = disableReply
        }
    }

    /// The pid outside the namespace of the process that is `inner` inside it, among the
    /// children of `parent` (an outside pid): from the NSpid line of /proc/PID/status.
    static func outsidePid(of inner: UInt32, childOf parent: pid_t) -> pid_t? {
        for child in childPids(of: parent) {
            guard let status = try? String(contentsOfFile: "/proc/\(child)/status", encoding: .utf8),
                  let line = status.split(separator: "\n").first(where: { $0.hasPrefix("NSpid:") }),
                  let last = line.split(separator: "\t").last.flatMap({ UInt32($0.trimmingCharacters(in: .whitespaces)) })
            else { continue }
            if last == inner { return child }
        }
        return nil
    }

    // MARK: - systemd's own restart

    static func systemdOwn(_ ns: SystemdNamespace, _ settings: Settings, events: ProcessEvents) async throws
        -> (toExec: Samples, toSignal: Samples)
    {
        progress("systemd: its own Restart=always, \(settings.crashes) crashes")
        let bus = try await DBusConnection.connect(.address(ns.busAddress))
        defer { bus.close() }
        let manager = try ObjectPath("/org/freedesktop/systemd1")
        let unit = "bgworker-bench-native.service"
        let unitPath = try ObjectPath("/org/freedesktop/systemd1/unit/" + ObjectPath.escapeElement(unit))
        let changes = try await SignalLog(address: ns.busAddress, MatchRule(path: unitPath, interface: "org.freedesktop.DBus.Properties",
                                                         member: "PropertiesChanged"))
        _ = try await bus.call(destination: "org.freedesktop.systemd1", path: manager,
                               interface: "org.freedesktop.systemd1.Manager", member: "Subscribe")
        let from = changes.nextIndex
        let execStart = DBusValue.array(.structure([.string, .array(.string), .bool]), [
            .structure([.string(worker[0]), .stringArray(worker), .bool(false)]),
        ])
        let properties: [(String, DBusValue)] = [
            ("Description", .string("bgworker-bench: systemd's own restart")),
            ("ExecStart", execStart),
            ("Restart", .string("always")),
            ("RestartUSec", .uint64(0)),
            ("StartLimitIntervalUSec", .uint64(0)),
            ("CollectMode", .string("inactive-or-failed")),
        ]
        _ = try await bus.call(
            destination: "org.freedesktop.systemd1", path: manager, interface: "org.freedesktop.systemd1.Manager",
            member: "StartTransientUnit",
            arguments: [.string(unit), .string("fail"),
                        .array(.structure([.string, .variant]), properties.map { .structure([.string($0.0), .variant($0.1)]) }),
                        .array(.structure([.string, .array(.structure([.string, .variant]))]), [])])
        @Sendable func mainPid(_ signal: DBusSignal) -> UInt32? {
            guard signal.arguments.count >= 2, signal.arguments[0].stringValue == "org.freedesktop.systemd1.Service",
                  case .dictionary(_, _, let entries) = signal.arguments[1] else { return nil }
            for entry in entries where entry.key.stringValue == "MainPID" {
                if let pid = entry.value.unwrappingVariant.uint32Value, pid != 0 { return pid }
            }
            return nil
        }
        var pid: UInt32 = 0
        if let first = try? await changes.next(from: from, timeout: .seconds(5), "the unit's first MainPID", where: { mainPid($0) != nil }) {
            pid = mainPid(first.signal) ?? 0
        }
        if pid == 0 {
            let r = try await bus.call(destination: "org.freedesktop.systemd1", path: unitPath,
                                       interface: "org.freedesktop.DBus.Properties", member: "Get",
                                       arguments: [.string("org.freedesktop.systemd1.Service"), .string("MainPID")])
            pid = r.first?.unwrappingVariant.uint32Value ?? 0
        }
        var toExec = Samples(), toSignal = Samples()
        for _ in 0..<settings.crashes {
            guard let outside = outsidePid(of: pid, childOf: ns.systemdPid) else { throw BenchError("MainPID \(pid) not found") }
            let old = pid
            let from = changes.nextIndex
            let t0 = monotonicNanoseconds()
            kill(outside, SIGKILL)
            let entry = try await changes.next(from: from, "a new MainPID") { s in mainPid(s).map { $0 != old } ?? false }
            toSignal.addInterval(from: t0, to: entry.at)
            let exec = try await events.exec(childOf: ns.systemdPid, after: t0)
            toExec.addInterval(from: t0, to: exec.timestamp)
            pid = mainPid(entry.signal) ?? 0
            await pause(5)
        }
        _ = try? await bus.call(destination: "org.freedesktop.systemd1", path: manager,
                                interface: "org.freedesktop.systemd1.Manager", member: "StopUnit",
                                arguments: [.string(unit), .string("replace")])
        return (toExec, toSignal)
    }

    // MARK: - bgworkerd inside the namespace

    static func throughDaemon(_ ns: SystemdNamespace, runner: String, directory: String, _ settings: Settings,
                              events: ProcessEvents) async throws -> RunnerResult {
        let run = "\(directory)/\(runner)"
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
        let bus = try await PrivateBus(socketPath: "\(run)/bus.sock")
        let configPath = "\(run)/bgworkerd.toml"
        let name = "crasher0001", toggled = "toggler0001"
        try BenchDaemon.writeConfiguration(
            workerTables(1, prefix: "crasher", argv: worker, extra: "restart-delay = 0\nstart-limit-burst = 0")
                + workerTables(1, prefix: "toggler", argv: worker),
            to: configPath, stateDirectory: "\(run)/state")
        let client = try await DBusConnection.connect(.address(bus.unixAddress))
        let states = try await SignalLog(address: bus.unixAddress, MatchRule(interface: Manager.interface, member: BgWorkerBus.Signal.workerStateChanged))
        let daemon: NamespacedDaemon
        do {
            daemon = try await NamespacedDaemon.start(ns, run: run, configPath: configPath, busAddress: bus.unixAddress, runner: runner)
        } catch {
            client.close()
            await bus.stop()
            throw error
        }
        func stop() async {
            await daemon.stop()
            client.close()
            await bus.stop()
        }
        guard let daemonPid = daemon.pid else { await stop(); throw BenchError("nsenter has no child") }
        // The workers' parent outside the namespace: systemd for units, the daemon for processes.
        let parent = runner == "systemd" ? ns.systemdPid : daemonPid
        events.watch(parent: parent)
        func call(_ member: String, _ worker: String) async throws {
            _ = try await client.call(destination: Manager.name, path: Manager.path, interface: Manager.interface,
                                      member: member, arguments: [.string(worker)], timeout: .seconds(60))
        }
        func currentPid(_ worker: String) async throws -> UInt32 {
            let rows = try await client.call(destination: Manager.name, path: Manager.path, interface: Manager.interface,
                                             member: "ListWorkers").first
            guard case .array(_, let items)? = rows else { return 0 }
            for case .structure(let f) in items where f.count == 5 && f[0].stringValue == worker { return f[3].uint32Value ?? 0 }
            return 0
        }
        var toExec = Samples(), toSignal = Samples(), enableReply = Samples(), enableExec = Samples(), disableReply = Samples()
        do {
            var pid = try await currentPid(name)
            for _ in 0..<settings.crashes {
                guard let outside = outsidePid(of: pid, childOf: parent) else { throw BenchError("worker pid \(pid) not found") }
                let from = states.nextIndex
                let t0 = monotonicNanoseconds()
                kill(outside, SIGKILL)
                let old = pid
                let entry = try await states.next(from: from, timeout: .seconds(20), "\(name) running again") {
                    guard let c = StateChange($0) else { return false }
                    return c.name == name && c.state == "running" && c.pid != old
                }
                toSignal.addInterval(from: t0, to: entry.at)
                let exec = try await events.exec(childOf: parent, after: t0)
                toExec.addInterval(from: t0, to: exec.timestamp)
                pid = StateChange(entry.signal)?.pid ?? 0
                await pause(5)
            }
            for _ in 0..<settings.toggles {
                let d0 = monotonicNanoseconds()
                try await call("Disable", toggled)
                disableReply.addInterval(from: d0, to: monotonicNanoseconds())
                await pause(5)
                let e0 = monotonicNanoseconds()
                try await call("Enable", toggled)
                enableReply.addInterval(from: e0, to: monotonicNanoseconds())
                let exec = try await events.exec(childOf: parent, after: e0)
                enableExec.addInterval(from: e0, to: exec.timestamp)
                await pause(5)
            }
        } catch {
            let log = daemon.log
            await stop()
            throw BenchError("--runner \(runner): \(error)\n--- bgworkerd log (tail) ---\n\(log.suffix(4000))")
        }
        await stop()
        return RunnerResult(toExec: toExec, toSignal: toSignal, enableReply: enableReply, enableExec: enableExec,
                            disableReply: disableReply)
    }
}

/// A private systemd 252 and a folder for the run under /var/lib (visible inside the namespace,
/// where /tmp and /run are private tmpfs), removed after `body`.
func withBenchNamespace<T: Sendable>(_ label: String, _ body: (SystemdNamespace, String) async throws -> T) async throws -> T {
    let directory = "/var/lib/bgworker-bench-\(uniqueID(8))"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
    Interrupt.register(directory)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    progress("\(label): starting a systemd namespace")
    return try await SystemdNamespace.with { ns in try await body(ns, directory) }
}

/// bgworkerd run inside a systemd namespace (nsenter), serving on a private bus whose socket is
/// outside the namespace's private /tmp and /run; its NOTIFY_SOCKET drained by the bench.
final class NamespacedDaemon: Sendable {
    let nsenter: ChildProcess
    let notify: NotifyDrain
    let logPath: String
    /// CLOCK_MONOTONIC (ns) just before nsenter was spawned, and when READY=1 arrived.
    let spawnedAt: UInt64
    let readyAt: UInt64

    private init(nsenter: ChildProcess, notify: NotifyDrain, logPath: String, spawnedAt: UInt64, readyAt: UInt64) {
        self.nsenter = nsenter
        self.notify = notify
        self.logPath = logPath
        self.spawnedAt = spawnedAt
        self.readyAt = readyAt
    }

    /// Starts bgworkerd with `--runner runner` and returns once it said READY=1; throws with its
    /// log if it exits first or says nothing within `timeout`. `logName` is the log's file in `run`.
    static func start(_ ns: SystemdNamespace, run: String, configPath: String, busAddress: String, runner: String,
                      logName: String = "bgworkerd.log", timeout: Duration = .seconds(60)) async throws -> NamespacedDaemon {
        let notify = try NotifyDrain()
        let logPath = "\(run)/\(logName)"
        let spawnedAt = monotonicNanoseconds()
        let nsenter = try ChildProcess(
            ns.nsenterArguments(["--wd=\(run)", builtExecutablePath("bgworkerd"), "--config", configPath,
                                 "--bus", busAddress, "--runner", runner]),
            extraEnvironment: ["NOTIFY_SOCKET": notify.address, "RUNTIME_DIRECTORY": "\(run)/run"],
            captureStdout: false, captureStderr: false, logFile: logPath)
        let readyAt = await withTaskGroup(of: UInt64?.self) { group in
            group.addTask { await notify.ready() }
            group.addTask { _ = try? await nsenter.waitForExit(timeout: timeout); return nil }
            defer { group.cancelAll() }
            return await group.next() ?? nil
        }
        let daemon = NamespacedDaemon(nsenter: nsenter, notify: notify, logPath: logPath, spawnedAt: spawnedAt, readyAt: readyAt ?? 0)
        guard readyAt != nil else {
            await daemon.stop()
            throw BenchError("bgworkerd --runner \(runner) did not get ready: \(daemon.log.suffix(4000))")
        }
        return daemon
    }

    /// The daemon's pid outside the namespace.
    var pid: pid_t? { childPids(of: nsenter.pid).first }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Sends `signal` to the daemon and waits for it to end (SIGTERM stops its workers first).
    func stop(signal: Int32 = SIGTERM, timeout: Duration = .seconds(30)) async {
        if let pid { kill(pid, signal) }
        if (try? await nsenter.waitForExit(timeout: timeout)) == nil { await nsenter.terminate(grace: .seconds(1)) }
        notify.close()
    }
}
