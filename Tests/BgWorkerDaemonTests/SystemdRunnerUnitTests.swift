import BgWorkerCore
import DBus
import Foundation
import TestSupport
import Testing

@testable import BgWorkerDaemon

/// The pure parts of the systemd runner: the unit's properties, the hash read back, and the
/// tracking of a unit from the signals systemd sends (sequences as systemd 252 sent them).
@Suite("SystemdRunner: units and tracking (no systemd)")
struct SystemdRunnerUnitTests {
    private func properties(_ spec: LaunchSpec, daemonDirectory: String? = nil) -> [String: DBusValue] {
        var out: [String: DBusValue] = [:]
        for item in WorkerUnit.properties(for: spec, daemonDirectory: daemonDirectory) {
            guard let fields = item.structureValue, fields.count == 2, let key = fields[0].stringValue else {
                Issue.record("not an (sv): \(item)")
                continue
            }
            #expect(out[key] == nil, "\(key) given twice")
            out[key] = fields[1].unwrappingVariant
        }
        return out
    }

    @Test func unitNamesAndPaths() {
        let plain = WorkerUnit(worker: "db-sync")
        #expect(plain.name == "bgworker-db-sync.service")
        #expect(plain.path.rawValue == "/org/freedesktop/systemd1/unit/bgworker_2ddb_2dsync_2eservice")
        let odd = WorkerUnit(worker: "a@b")
        #expect(odd.name == "bgworker-a\\x40b.service")
        #expect(odd.path.rawValue == "/org/freedesktop/systemd1/unit/bgworker_2da_5cx40b_2eservice")
        #expect(WorkerUnit(worker: "x.y-z_1").name == "bgworker-x.y-z_1.service")
    }

    @Test func notifyAndWatchdogGoToSystemd() {
        let plain = properties(LaunchSpec(name: "a", argv: ["/bin/true"]))
        #expect(plain["Type"] == .string("exec"))
        #expect(plain["NotifyAccess"] == nil && plain["WatchdogUSec"] == nil && plain["TimeoutStartUSec"] == nil)
        let notify = properties(LaunchSpec(name: "a", argv: ["/bin/true"], ready: .notify, startTimeout: 2.5, watchdog: 1e300))
        #expect(notify["Type"] == .string("notify"))
        #expect(notify["NotifyAccess"] == .string("all"))
        #expect(notify["TimeoutStartUSec"] == .uint64(2_500_000))
        #expect(notify["WatchdogUSec"] == .uint64(.max))
        let unlimited = properties(LaunchSpec(name: "a", argv: ["/bin/true"], ready: .notify, startTimeout: 0))
        #expect(unlimited["TimeoutStartUSec"] == .uint64(.max))
        let watchdogOnly = properties(LaunchSpec(name: "a", argv: ["/bin/true"], watchdog: 3))
        #expect(watchdogOnly["Type"] == .string("exec"))
        #expect(watchdogOnly["NotifyAccess"] == .string("all"))
        #expect(watchdogOnly["WatchdogUSec"] == .uint64(3_000_000))
    }

    @Test func propertiesOfAPlainWorker() throws {
        let spec = LaunchSpec(name: "dice", argv: ["/usr/bin/env", "$HOME", "${X}", "$$", "%n"],
                              environment: ["B": "2", "A": "1"], stopTimeout: .milliseconds(2500),
                              definitionHash: 0xab)
        let p = properties(spec)
        #expect(p["Description"]?.stringValue == "bgworker worker dice")
        #expect(p["Type"]?.stringValue == "exec")
        #expect(p["Slice"]?.stringValue == "bgworker.slice")
        #expect(p["KillMode"]?.stringValue == "control-group")
        #expect(p["CollectMode"]?.stringValue == "inactive-or-failed")
        #expect(p["Restart"]?.stringValue == "no")
        #expect(p["SyslogIdentifier"]?.stringValue == "dice")
        #expect(p["TimeoutStopUSec"] == .uint64(2_500_000))
        #expect(p["Environment"]?.stringArrayValue == ["A=1", "B=2", "BGWORKER_DEFINITION_HASH=00000000000000ab"])
        let exec = try #require(p["ExecStartEx"])
        #expect(exec.signature.rawValue == "a(sasas)")
        let command = try #require(exec.arrayValue?.first?.structureValue)
        #expect(command[0].stringValue == "/usr/bin/env")
        #expect(command[1].stringArrayValue == spec.argv, "argv goes as given; no-env-expand keeps the $ forms")
        #expect(command[2].stringArrayValue == ["no-env-expand"])
        for key in ["WorkingDirectory", "User", "Group", "MemoryMax", "CPUQuotaPerSecUSec", "TasksMax", "PrivateTmp",
                    "ProtectSystem", "ProtectHome", "NoNewPrivileges"] {
            #expect(p[key] == nil, "\(key) is not set when not configured")
        }
    }

    /// Every resource and sandbox setting, set (the real-systemd test reads these back too).
    static var everyResource: ResourceControls {
        var resources = ResourceControls()
        resources.memoryMax = 100 << 20
        resources.cpuQuotaPercent = 150
        resources.tasksMax = 50
        resources.privateTmp = true
        resources.protectSystem = .full
        resources.protectHome = .readOnly
        resources.noNewPrivileges = true
        return resources
    }

    @Test func propertiesOfAFullyConfiguredWorker() {
        let spec = LaunchSpec(name: "w", argv: ["/bin/true"], workingDirectory: "/srv", user: "nobody",
                              group: "nogroup", resources: Self.everyResource)
        let p = properties(spec, daemonDirectory: "/ignored")
        #expect(p["WorkingDirectory"]?.stringValue == "/srv")
        #expect(p["User"]?.stringValue == "nobody")
        #expect(p["Group"]?.stringValue == "nogroup")
        #expect(p["MemoryMax"] == .uint64(100 << 20))
        #expect(p["CPUQuotaPerSecUSec"] == .uint64(1_500_000))
        #expect(p["TasksMax"] == .uint64(50))
        #expect(p["PrivateTmp"] == .bool(true))
        #expect(p["ProtectSystem"]?.stringValue == "full")
        #expect(p["ProtectHome"]?.stringValue == "read-only")
        #expect(p["NoNewPrivileges"] == .bool(true))
        #expect(properties(LaunchSpec(name: "w", argv: ["/bin/true"]), daemonDirectory: "/var/lib/x")["WorkingDirectory"]?
            .stringValue == "/var/lib/x", "no working-directory: the daemon's")
    }

    @Test func protectValuesInSystemdsSpelling() {
        #expect([ProtectSystem.off, .on, .full, .strict].map(WorkerUnit.systemdValue) == ["no", "yes", "full", "strict"])
        #expect([ProtectHome.off, .on, .readOnly, .tmpfs].map(WorkerUnit.systemdValue) == ["no", "yes", "read-only", "tmpfs"])
    }

    @Test func definitionHashReadBack() {
        var definition = WorkerDefinition(name: "w", exec: ["/bin/true"])
        definition.environment = ["K": "v"]
        let spec = LaunchSpec(name: "w", argv: ["/bin/true"], definitionHash: definition.definitionHash)
        let environment = WorkerUnit.environment(for: spec)
        #expect(environment.last == "BGWORKER_DEFINITION_HASH=\(definition.definitionHashText)")
        #expect(WorkerUnit.definitionHash(inEnvironment: environment) == definition.definitionHash)
        #expect(WorkerUnit.definitionHash(inEnvironment: ["A=1"]) == nil)
        #expect(WorkerUnit.definitionHash(inEnvironment: ["BGWORKER_DEFINITION_HASH=xyz"]) == nil)
        #expect(WorkerUnit.definitionHash(inEnvironment: ["BGWORKER_DEFINITION_HASH=12"]) == nil)
    }

    @Test func durationsInMicroseconds() {
        #expect(WorkerUnit.microseconds(.seconds(5)) == 5_000_000)
        #expect(WorkerUnit.microseconds(.zero) == 0)
        #expect(WorkerUnit.microseconds(.seconds(Int64.max)) == .max)
    }

    // MARK: Tracking

    private static func service(mainPID: UInt32, result: String = "success", code: Int32 = 0, status: Int32 = 0,
                                execMainPID: UInt32? = nil) -> [String: DBusValue] {
        ["MainPID": .variant(.uint32(mainPID)), "Result": .variant(.string(result)),
         "ExecMainPID": .variant(.uint32(execMainPID ?? mainPID)), "ExecMainCode": .variant(.int32(code)),
         "ExecMainStatus": .variant(.int32(status))]
    }

    private static func unit(_ active: String, _ sub: String) -> [String: DBusValue] {
        ["ActiveState": .variant(.string(active)), "SubState": .variant(.string(sub))]
    }

    /// Type=notify (ready = "notify"): the start is answered once the main process runs (the
    /// start job waits for READY=1), StatusText, reloading and deactivating while running, the
    /// watchdog's and the start timeout's results (sequences seen with systemd 252).
    @Test func aNotifyUnitsStatesAndResults() {
        func merged(_ a: [String: DBusValue], _ b: [String: DBusValue]) -> [String: DBusValue] { a.merging(b) { x, _ in x } }
        var t = UnitTracker(notify: true)
        #expect(t.propertiesChanged(Self.unit("inactive", "dead")) == [])
        #expect(t.startJobCreated("/j/5") == [])
        #expect(t.propertiesChanged(["StatusText": .variant(.string("connecting"))]) == [])
        #expect(t.propertiesChanged(merged(Self.service(mainPID: 11), Self.unit("activating", "start")))
            == [.started(pid: 11), .status(pid: 11, "connecting")])
        #expect(t.propertiesChanged(["StatusText": .variant(.string("up"))]) == [.status(pid: 11, "up")])
        #expect(t.propertiesChanged(Self.unit("active", "running")) == [.ready(pid: 11)])
        #expect(t.jobRemoved(job: "/j/5", result: "done") == [])
        #expect(t.propertiesChanged(["StatusText": .variant(.string("cycle 1"))]) == [.status(pid: 11, "cycle 1")])
        #expect(t.propertiesChanged(Self.unit("reloading", "reload")) == [.reloading(pid: 11)])
        #expect(t.propertiesChanged(Self.unit("active", "running")) == [.ready(pid: 11)])
        // systemd's watchdog kill is no STOPPING=1: it was reported as `stopping by itself`.
        #expect(t.propertiesChanged(Self.unit("deactivating", "stop-watchdog")) == [])
        #expect(t.propertiesChanged(Self.service(mainPID: 0, result: "watchdog", code: 3, status: 6, execMainPID: 11)) == [])
        #expect(t.propertiesChanged(Self.unit("failed", "failed")) == [.exited(pid: 11, .watchdog)])

        // No READY=1 within TimeoutStartUSec: systemd stops the unit (Result `timeout`, the job
        // `failed`); its deactivating is no STOPPING=1.
        var late = UnitTracker(notify: true)
        #expect(late.startJobCreated("/j/6") == [])
        #expect(late.propertiesChanged(merged(Self.service(mainPID: 12), Self.unit("activating", "start"))) == [.started(pid: 12)])
        #expect(late.propertiesChanged(Self.unit("deactivating", "stop-sigterm")) == [])
        #expect(late.propertiesChanged(Self.service(mainPID: 0, result: "timeout", code: 2, status: 15, execMainPID: 12)) == [])
        #expect(late.propertiesChanged(Self.unit("failed", "failed")) == [.exited(pid: 12, .startTimeout)])
        #expect(late.jobRemoved(job: "/j/6", result: "failed") == [])
        // The same when its pid was never seen activating: the job's end reports it.
        var unseen = UnitTracker(notify: true)
        #expect(unseen.startJobCreated("/j/10") == [])
        #expect(unseen.propertiesChanged(merged(Self.service(mainPID: 0, result: "timeout", code: 2, status: 15, execMainPID: 16),
                                                Self.unit("failed", "failed"))) == [])
        #expect(unseen.jobRemoved(job: "/j/10", result: "failed") == [.started(pid: 16), .exited(pid: 16, .startTimeout)])

        // The pid announced before StartTransientUnit's reply: answered with the reply.
        var early = UnitTracker(notify: true)
        #expect(early.propertiesChanged(merged(Self.service(mainPID: 13), Self.unit("activating", "start"))) == [])
        #expect(early.startJobCreated("/j/7") == [.started(pid: 13)])

        // READY=1 before the pid was seen activating: the job's end answers, ready at once.
        var quick = UnitTracker(notify: true)
        #expect(quick.startJobCreated("/j/8") == [])
        #expect(quick.propertiesChanged(merged(Self.service(mainPID: 14), Self.unit("active", "running"))) == [])
        #expect(quick.jobRemoved(job: "/j/8", result: "done") == [.started(pid: 14), .ready(pid: 14)])

        // Not a notify unit: the start job's end answers (Type=exec: the exec succeeded).
        var exec = UnitTracker()
        #expect(exec.startJobCreated("/j/9") == [])
        #expect(exec.propertiesChanged(merged(Self.service(mainPID: 15), Self.unit("activating", "start"))) == [])
        #expect(exec.jobRemoved(job: "/j/9", result: "done") == [.started(pid: 15), .ready(pid: 15)])
    }

    @Test func aStartThatRunsAndExits() {
        var t = UnitTracker()
        // The new unit's first announcement reads inactive: no exit.
        #expect(t.propertiesChanged(Self.service(mainPID: 39)) == [])
        #expect(t.propertiesChanged(Self.unit("inactive", "dead")) == [])
        #expect(t.startJobCreated("/org/freedesktop/systemd1/job/26") == [])
        #expect(t.propertiesChanged(Self.unit("activating", "start")) == [])
        #expect(t.propertiesChanged(Self.unit("active", "running")) == [])
        #expect(t.jobRemoved(job: "/org/freedesktop/systemd1/job/25", result: "done") == [], "another job")
        #expect(t.jobRemoved(job: "/org/freedesktop/systemd1/job/26", result: "done") == [.started(pid: 39), .ready(pid: 39)])
        #expect(t.propertiesChanged(Self.service(mainPID: 0, result: "exit-code", code: 1, status: 3, execMainPID: 39)) == [])
        #expect(t.propertiesChanged(Self.unit("failed", "failed")) == [.exited(pid: 39, .exited(3))])
        #expect(t.phase == .ended)
        #expect(t.propertiesChanged(Self.unit("failed", "failed")) == [], "once only")
    }

    @Test func theJobCanEndBeforeStartTransientUnitsReplyIsSeen() {
        var t = UnitTracker()
        _ = t.propertiesChanged(Self.service(mainPID: 7))
        _ = t.propertiesChanged(Self.unit("active", "running"))
        #expect(t.jobRemoved(job: "/j/1", result: "done") == [])
        #expect(t.startJobCreated("/j/1") == [.started(pid: 7), .ready(pid: 7)])
    }

    @Test func aMissingProgramFailsTheStart() {
        var t = UnitTracker()
        _ = t.startJobCreated("/j/13")
        _ = t.propertiesChanged(Self.service(mainPID: 37))
        _ = t.propertiesChanged(Self.unit("activating", "start"))
        _ = t.propertiesChanged(Self.service(mainPID: 0, result: "exit-code", code: 1, status: 203, execMainPID: 37))
        #expect(t.propertiesChanged(Self.unit("failed", "failed")) == [], "an end before the job's end is no exit")
        #expect(t.jobRemoved(job: "/j/13", result: "failed")
                == [.startFailed("start job failed: exit-code, main process exited with status 203 (EXEC)")])
        #expect(t.phase == .ended)
    }

    @Test func aProgramThatDiesRightAfterExecStartedAndExited() {
        // systemd 252 saw the SIGCHLD before the exec: the start job "failed", yet the program ran.
        var t = UnitTracker()
        _ = t.startJobCreated("/j/5")
        _ = t.propertiesChanged(Self.service(mainPID: 0, result: "signal", code: 2, status: 11, execMainPID: 40))
        _ = t.propertiesChanged(Self.unit("failed", "failed"))
        #expect(t.jobRemoved(job: "/j/5", result: "failed") == [.started(pid: 40), .exited(pid: 40, .killed(11))])
        var exited = UnitTracker()
        _ = exited.startJobCreated("/j/6")
        _ = exited.propertiesChanged(Self.service(mainPID: 0, result: "exit-code", code: 1, status: 3, execMainPID: 41))
        _ = exited.propertiesChanged(Self.unit("failed", "failed"))
        #expect(exited.jobRemoved(job: "/j/6", result: "failed") == [.started(pid: 41), .exited(pid: 41, .exited(3))])
    }

    /// The main process ended while others of its cgroup live: systemd stops them (deactivating,
    /// stop-sigterm, after the Service's flush with ExecMainCode). That is no STOPPING=1, which it
    /// was reported as; a STOPPING=1 (the same SubState, the main process alive) still is.
    @Test func theStopOfWhatOutlivesTheMainProcessIsNoStopping() {
        var t = Self.running(50, job: "/j/71")
        #expect(t.propertiesChanged(Self.service(mainPID: 0, result: "exit-code", code: 1, status: 3, execMainPID: 50)) == [])
        #expect(t.propertiesChanged(Self.unit("deactivating", "stop-sigterm")) == [])
        #expect(t.propertiesChanged(Self.unit("failed", "failed")) == [.exited(pid: 50, .exited(3))])

        var stopping = Self.running(51, job: "/j/72")
        #expect(stopping.propertiesChanged(Self.unit("deactivating", "stop-sigterm")) == [.stopping(pid: 51)])
    }

    /// A tracker whose unit's start job is done, with `pid` running.
    private static func running(_ pid: UInt32, job: String) -> UnitTracker {
        var t = UnitTracker()
        _ = t.startJobCreated(job)
        _ = t.propertiesChanged(service(mainPID: pid))
        _ = t.propertiesChanged(unit("active", "running"))
        #expect(t.jobRemoved(job: job, result: "done") == [.started(pid: Int32(pid)), .ready(pid: Int32(pid))])
        return t
    }

    @Test func aStopEndsWithTheSignalThatEndedIt() {
        var t = Self.running(48, job: "/j/61")
        _ = t.propertiesChanged(Self.unit("deactivating", "stop-sigterm"))
        _ = t.propertiesChanged(Self.service(mainPID: 48, result: "timeout"))
        #expect(t.propertiesChanged(Self.unit("deactivating", "stop-sigkill")) == [])
        _ = t.propertiesChanged(Self.service(mainPID: 0, result: "timeout", code: 2, status: 9, execMainPID: 48))
        #expect(t.propertiesChanged(Self.unit("failed", "failed")) == [.exited(pid: 48, .killed(9))])
    }

    @Test func aDoneJobWithoutAPidAsksForARead() {
        var t = UnitTracker()
        _ = t.startJobCreated("/j/1")
        #expect(t.jobRemoved(job: "/j/1", result: "done") == [.needsProperties])
        #expect(t.propertiesRead(Self.service(mainPID: 5).merging(Self.unit("active", "running")) { a, _ in a })
                == [.started(pid: 5), .ready(pid: 5)])
        var gone = UnitTracker()
        _ = gone.startJobCreated("/j/1")
        _ = gone.jobRemoved(job: "/j/1", result: "done")
        #expect(gone.propertiesRead(Self.service(mainPID: 0, result: "exit-code", code: 1, status: 0, execMainPID: 9)
            .merging(Self.unit("inactive", "dead")) { a, _ in a }) == [.started(pid: 9), .ready(pid: 9), .exited(pid: 9, .exited(0))])
    }

    @Test func adoptionAndLeaving() {
        var adopted = UnitTracker()
        _ = adopted.propertiesChanged(Self.unit("active", "running"))
        #expect(adopted.adopted(pid: 12) == [])
        _ = adopted.propertiesChanged(Self.service(mainPID: 0, result: "signal", code: 2, status: 15, execMainPID: 12))
        #expect(adopted.propertiesChanged(Self.unit("inactive", "dead")) == [.exited(pid: 12, .killed(15))])

        var endedMeanwhile = UnitTracker()
        _ = endedMeanwhile.propertiesRead(Self.service(mainPID: 0, result: "exit-code", code: 1, status: 1, execMainPID: 12)
            .merging(["Environment": .variant(.stringArray(["BGWORKER_DEFINITION_HASH=00000000000000aa"]))]) { a, _ in a })
        #expect(WorkerUnit.definitionHash(inEnvironment: endedMeanwhile.status.environment) == 0xaa)
        _ = endedMeanwhile.propertiesChanged(Self.unit("failed", "failed"))
        #expect(endedMeanwhile.adopted(pid: 12) == [.exited(pid: 12, .exited(1))])

        // A notify unit's last STATUS= is read with its state and reported at adoption.
        var withStatus = UnitTracker()
        _ = withStatus.propertiesRead(Self.service(mainPID: 13).merging(["StatusText": .variant(.string("cycle 9"))]) { a, _ in a })
        _ = withStatus.propertiesRead(Self.unit("active", "running"))
        #expect(withStatus.adopted(pid: 13) == [.status(pid: 13, "cycle 9")])
        var reloading = UnitTracker()
        _ = reloading.propertiesRead(Self.service(mainPID: 14))
        _ = reloading.propertiesRead(Self.unit("reloading", "reload"))
        #expect(reloading.adopted(pid: 14) == [.reloading(pid: 14)])
        #expect(reloading.propertiesChanged(Self.unit("active", "running")) == [.ready(pid: 14)])

        var leaving = UnitTracker()
        _ = leaving.propertiesChanged(Self.service(mainPID: 30))
        #expect(leaving.leaving() == [])
        #expect(leaving.propertiesChanged(Self.unit("inactive", "dead")).count == 1)
    }

    @Test func oddValuesFromThePeerAreIgnored() {
        var t = UnitTracker()
        _ = t.startJobCreated("/j/1")
        #expect(t.propertiesChanged(["MainPID": .variant(.string("x")), "ActiveState": .uint32(3)]) == [])
        #expect(t.status == UnitStatus())
    }

    @Test func exitTexts() {
        var s = UnitStatus()
        #expect(s.exitText == nil)
        s.execMainCode = 1; s.execMainStatus = 217
        #expect(s.exitText == "exited with status 217 (USER)")
        s.execMainStatus = 3
        #expect(s.exitText == "exited with status 3")
        s.execMainCode = 3; s.execMainStatus = 11
        #expect(s.exit == .dumped(11))
        #expect(s.exitText == "killed by SIGSEGV (core dumped)")
    }

    // MARK: Detection

    @Test func pid1Detection() throws {
        let root = try TemporaryDirectory(prefix: "bgw-sd-detect")
        defer { root.remove() }
        let proc = root.file("proc"), run = root.file("run")
        try FileManager.default.createDirectory(atPath: "\(proc)/1", withIntermediateDirectories: true)
        try "init\n".write(toFile: "\(proc)/1/comm", atomically: true, encoding: .utf8)
        #expect(SystemdRunner.pid1IsNotSystemd(procRoot: proc, runRoot: run) == "PID 1 is 'init', not systemd")
        try "systemd\n".write(toFile: "\(proc)/1/comm", atomically: true, encoding: .utf8)
        #expect(SystemdRunner.pid1IsNotSystemd(procRoot: proc, runRoot: run)?.contains("was not booted with systemd") == true)
        try FileManager.default.createDirectory(atPath: "\(run)/systemd/system", withIntermediateDirectories: true)
        #expect(SystemdRunner.pid1IsNotSystemd(procRoot: proc, runRoot: run) == nil)
    }
}
