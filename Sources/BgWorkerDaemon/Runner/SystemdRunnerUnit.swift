// What the systemd runner says to systemd about one worker, and what it reads back: the transient
// unit's properties built from a LaunchSpec, and the definition hash stored in its Environment.
// Pure (no bus traffic), so it is tested without systemd.

import BgWorkerCore
import DBus

/// Names on systemd's bus (org.freedesktop.systemd1(5)).
enum SystemdBus {
    static let name = "org.freedesktop.systemd1"
    static let managerPath = ObjectPath.systemdManager
    static let manager = "org.freedesktop.systemd1.Manager"
    static let unit = "org.freedesktop.systemd1.Unit"
    static let service = "org.freedesktop.systemd1.Service"
    static let properties = "org.freedesktop.DBus.Properties"
    static let unitPathPrefix = "/org/freedesktop/systemd1/unit/"

    // Errors systemd returns that the runner acts on.
    static let noSuchUnit = "org.freedesktop.systemd1.NoSuchUnit"
    static let unitExists = "org.freedesktop.systemd1.UnitExists"
    static let alreadySubscribed = "org.freedesktop.systemd1.AlreadySubscribed"
    static let notSubscribed = "org.freedesktop.systemd1.NotSubscribed"
}

extension ObjectPath {
    static let systemdManager = (try? ObjectPath("/org/freedesktop/systemd1")) ?? .root
}

/// One worker's transient unit: its name, its object path, and the properties it is created with.
struct WorkerUnit: Sendable, Equatable {
    /// The environment variable that carries the definition hash on the unit, so that a new
    /// daemon can tell whether a running unit still matches its worker's definition.
    static let hashVariable = "BGWORKER_DEFINITION_HASH"
    /// The slice every worker unit is placed in.
    static let slice = "bgworker.slice"

    let worker: String
    /// `bgworker-<escaped name>.service`.
    let name: String
    /// `/org/freedesktop/systemd1/unit/<name escaped as systemd does in paths>`.
    let path: ObjectPath

    init(worker: String) {
        self.worker = worker
        name = systemdUnitName(forWorker: worker)
        path = WorkerUnit.objectPath(ofUnit: name)
    }

    /// The object path systemd gives a unit of this name (`sd_bus_path_encode`).
    static func objectPath(ofUnit unit: String) -> ObjectPath {
        // Every escaped element is valid in a path ([A-Za-z0-9_] only); the prefix is a literal.
        (try? ObjectPath(SystemdBus.unitPathPrefix + ObjectPath.escapeElement(unit))) ?? .systemdManager
    }

    /// The `a(sv)` properties of `StartTransientUnit` for `spec`.
    ///
    /// - `ExecStartEx` with the flag `no-env-expand`, not `ExecStart`: systemd expands `$NAME`,
    ///   `${NAME}` and `$$` in `ExecStart` arguments at exec time, and the worker's argv must reach
    ///   it byte for byte, as with the process runner (systemd 252, tested).
    /// - `Type=exec` (`notify` for `ready = "notify"`): the start job ends only once `execve` succeeded, so a missing program is a
    ///   failed start (status 203/EXEC) rather than a start followed by an exit.
    /// - `KillMode=control-group`: stopping the worker stops everything in its cgroup.
    /// - `CollectMode=inactive-or-failed`: the unit is unloaded when it ends, failed or not, so the
    ///   name is free for the next start.
    /// - `Restart=no`: restart policy, backoff and HA gating stay in bgworkerd.
    /// - `daemonDirectory`: used as `WorkingDirectory` when the spec names none (the contract's
    ///   "daemon's" default; systemd's own default would be `/`).
    static func properties(for spec: LaunchSpec, daemonDirectory: String? = nil) -> [DBusValue] {
        var list: [(String, DBusValue)] = [
            ("Description", .string("bgworker worker \(spec.name)")),
            ("ExecStartEx", .array(execCommandType, [
                .structure([.string(spec.argv.first ?? ""), .stringArray(spec.argv), .stringArray(["no-env-expand"])]),
            ])),
            ("Type", .string("exec")),
            ("Environment", .stringArray(environment(for: spec))),
            ("Slice", .string(slice)),
            ("KillMode", .string("control-group")),
            ("TimeoutStopUSec", .uint64(microseconds(spec.stopTimeout))),
            ("CollectMode", .string("inactive-or-failed")),
            ("Restart", .string("no")),
            ("SyslogIdentifier", .string(spec.name)),
        ]
        // The notify protocol goes to systemd itself: it serves NOTIFY_SOCKET, enforces the start
        // timeout and the watchdog (SIGABRT, then SIGKILL after TimeoutAbortUSec, which defaults
        // to the stop timeout), and shows STATUS= as StatusText. 0 s is "no limit" for systemd too.
        if spec.ready == .notify {
            list[list.firstIndex { $0.0 == "Type" }!].1 = .string("notify")
            list.append(("TimeoutStartUSec", .uint64(spec.startTimeout > 0 ? clampedMicroseconds(spec.startTimeout) : .max)))
        }
        if spec.usesNotify { list.append(("NotifyAccess", .string("all"))) }
        if spec.watchdog > 0 { list.append(("WatchdogUSec", .uint64(clampedMicroseconds(spec.watchdog)))) }
        if let directory = spec.workingDirectory ?? daemonDirectory {
            list.append(("WorkingDirectory", .string(directory)))
        }
        if let user = spec.user { list.append(("User", .string(user))) }
        if let group = spec.group { list.append(("Group", .string(group))) }
        list += resourceProperties(spec.resources)
        return list.map { .structure([.string($0.0), .variant($0.1)]) }
    }

    /// `(sasas)`: path, argv, flags.
    static let execCommandType = DBusType.structure([.string, .array(.string), .array(.string)])

    /// The worker's environment as `NAME=value` in name order, plus the definition hash.
    static func environment(for spec: LaunchSpec) -> [String] {
        spec.environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
            + ["\(hashVariable)=\(hashText(spec.definitionHash))"]
    }

    /// The systemd properties of the resource and sandbox settings that are set.
    static func resourceProperties(_ resources: ResourceControls) -> [(String, DBusValue)] {
        var list: [(String, DBusValue)] = []
        if let bytes = resources.memoryMax { list.append(("MemoryMax", .uint64(bytes))) }
        if let percent = resources.cpuQuotaPercent {
            // CPUQuota=50% is 500 ms of CPU time per second of wall time.
            list.append(("CPUQuotaPerSecUSec", .uint64(UInt64((percent * 10_000).rounded()))))
        }
        if let tasks = resources.tasksMax { list.append(("TasksMax", .uint64(tasks))) }
        if let on = resources.privateTmp { list.append(("PrivateTmp", .bool(on))) }
        if let mode = resources.protectSystem { list.append(("ProtectSystem", .string(systemdValue(mode)))) }
        if let mode = resources.protectHome { list.append(("ProtectHome", .string(systemdValue(mode)))) }
        if let on = resources.noNewPrivileges { list.append(("NoNewPrivileges", .bool(on))) }
        return list
    }

    /// systemd's own spelling, as `systemctl show` prints it back.
    static func systemdValue(_ mode: ProtectSystem) -> String {
        switch mode {
        case .off: "no"
        case .on: "yes"
        case .full: "full"
        case .strict: "strict"
        }
    }

    static func systemdValue(_ mode: ProtectHome) -> String {
        switch mode {
        case .off: "no"
        case .on: "yes"
        case .readOnly: "read-only"
        case .tmpfs: "tmpfs"
        }
    }

    /// 16 lowercase hex digits, as `WorkerDefinition.definitionHashText`.
    static func hashText(_ hash: UInt64) -> String {
        let digits = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    /// The definition hash in a unit's `Environment` (`as`), or nil when it carries none.
    static func definitionHash(inEnvironment environment: [String]) -> UInt64? {
        let prefix = hashVariable + "="
        guard let entry = environment.last(where: { $0.hasPrefix(prefix) }) else { return nil }
        let digits = entry.dropFirst(prefix.count)
        guard digits.count == 16 else { return nil }
        return UInt64(digits, radix: 16)
    }

    static func microseconds(_ duration: Duration) -> UInt64 {
        let parts = duration.components
        guard parts.seconds >= 0 else { return 0 }
        // Beyond UInt64 is "infinity" for systemd (UInt64.max) anyway.
        let (whole, overflow) = UInt64(parts.seconds).multipliedReportingOverflow(by: 1_000_000)
        guard !overflow else { return .max }
        return whole.addingReportingOverflow(UInt64(parts.attoseconds / 1_000_000_000_000)).overflow
            ? .max : whole + UInt64(parts.attoseconds / 1_000_000_000_000)
    }
}
