// Pure logic: no I/O, no clock, no files. Depends on the standard library only.
//
// The configuration model of the contract: `[daemon]`, `[ha]` and `[worker.NAME]`, decoded from
// the main file and the drop-in files, fully validated, every error with file, line and key.

/// A configuration file as the daemon read it: its path (for messages) and its text.
public struct SourceFile: Sendable, Equatable {
    public var path: String
    /// The file's bytes as read: the parser checks that they are UTF-8.
    public var bytes: [UInt8]

    public init(path: String, text: String) {
        self.path = path
        self.bytes = Array(text.utf8)
    }

    public init(path: String, bytes: [UInt8]) {
        self.path = path
        self.bytes = bytes
    }

    /// The bytes as text (invalid UTF-8 replaced by U+FFFD).
    public var text: String {
        get { String(decoding: bytes, as: UTF8.self) }
        set { bytes = Array(newValue.utf8) }
    }
}

/// One configuration problem, located precisely.
///
/// `description` reads like `/etc/bgworker/bgworkerd.toml:12: [worker.dice] unknown key 'exec-start'`.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int
    /// The table the problem is in, as written in a header without brackets (`worker.dice`), or
    /// nil for the top level and for syntax errors.
    public var table: String?
    /// The key the problem is about, if any.
    public var key: String?
    public var message: String

    public init(file: String, line: Int, table: String? = nil, key: String? = nil, message: String) {
        self.file = file
        self.line = line
        self.table = table
        self.key = key
        self.message = message
    }

    public var description: String {
        "\(file):\(line): " + (table.map { "[\($0)] " } ?? "") + message
    }
}

/// All problems of a configuration, in file and line order.
public struct ConfigErrors: Error, Sendable, Equatable, CustomStringConvertible {
    public var errors: [ConfigError]

    public init(_ errors: [ConfigError]) {
        self.errors = errors
    }

    public var description: String {
        errors.map(\.description).joined(separator: "\n")
    }
}

public enum LogLevel: String, Sendable, CaseIterable {
    case trace, debug, info, notice, warning, error, critical

    /// A level as a person types it: any case, and `warn` for `warning` (as syslog and most
    /// loggers spell it). `rawValue` stays the one spelling the daemon reports.
    public init?(parsing text: String) {
        let lowered = text.lowercased()
        self.init(rawValue: lowered == "warn" ? "warning" : lowered)
    }
}

public enum RunnerKind: String, Sendable, CaseIterable {
    case auto, process, systemd
}

/// Which HA role a worker runs on.
public enum RunOn: String, Sendable, CaseIterable {
    case primary, secondary, any
}

/// `ready`: `exec`, running once executed; `notify`, running once it sends `READY=1`.
public enum ReadyMode: String, Sendable, CaseIterable {
    case exec, notify
}

/// What role `unknown` does to `primary`/`secondary` workers.
public enum OnLost: String, Sendable, CaseIterable {
    case stop, keep
}

public enum HASource: Sendable, Equatable {
    case none
    /// keepalived's `org.keepalived.Vrrp1`, the VRRP instance at this object path.
    case keepalived(instance: String)
    /// An `org.example.HAManager` at this bus name.
    case dbus(service: String)
    /// A Pacemaker cluster sets the role with `SetHARole` (the OCF agent `ocf:bgworker:role`).
    case pacemaker
}

public struct DaemonSettings: Sendable, Equatable {
    public var logLevel: LogLevel = .info
    public var runner: RunnerKind = .auto
    public var stateDirectory: String = "/var/lib/bgworker"
    /// Besides root, members of this group may change state; nil when not configured.
    public var adminGroup: String? = nil
    /// As written: relative values are relative to the main file's directory (the daemon resolves).
    public var workersDirectory: String = "workers.d"
    /// `log-buffer-lines`: output lines kept in memory per worker for `Logs` (the default of
    /// every worker that sets none).
    public var logBufferLines: Int = 200

    /// The most `log-buffer-lines` accepts: with lines cut at 4 KiB, 40 MiB per worker at worst.
    public static let maxLogBufferLines = 10_000

    public init() {}
}

public struct HASettings: Sendable, Equatable {
    public static let defaultService = "org.example.HAManager"

    public var source: HASource = .none
    public var onLost: OnLost = .stop
    /// `keep-for`: seconds the last known role stays in force under `on-lost = keep` once the
    /// role is `unknown`; 0 is without limit.
    public var keepFor: Double = 0
    /// `lease` (source `pacemaker` only): seconds a role set with `SetHARole` lasts unless set
    /// again; then it is `unknown`.
    public var lease: Double = HASettings.defaultLease

    public static let defaultLease = 30.0

    public init(source: HASource = .none, onLost: OnLost = .stop, keepFor: Double = 0, lease: Double = HASettings.defaultLease) {
        self.source = source
        self.onLost = onLost
        self.keepFor = keepFor
        self.lease = lease
    }

    /// The lease that applies: `lease` with source `pacemaker`, else none (the other sources
    /// report changes, not renewals).
    public var leaseInForce: Double? { source == .pacemaker ? lease : nil }
}

/// `protect-system`: `true` (or "true"), "full", "strict"; `false` means off.
public enum ProtectSystem: String, Sendable, Hashable {
    case off = "false", on = "true", full, strict
}

/// `protect-home`: `true` (or "true"), "read-only", "tmpfs"; `false` means off.
public enum ProtectHome: String, Sendable, Hashable {
    case off = "false", on = "true", readOnly = "read-only", tmpfs
}

/// Resource and sandbox settings only the systemd runner can honour; nil means "not set".
public struct ResourceControls: Sendable, Hashable {
    /// Bytes.
    public var memoryMax: UInt64? = nil
    /// Percent of one CPU; may exceed 100.
    public var cpuQuotaPercent: Double? = nil
    public var tasksMax: UInt64? = nil
    public var privateTmp: Bool? = nil
    public var protectSystem: ProtectSystem? = nil
    public var protectHome: ProtectHome? = nil
    public var noNewPrivileges: Bool? = nil

    public init() {}

    /// The configuration keys of these settings, in the order they are checked.
    public static let keys = [
        "memory-max", "cpu-quota", "tasks-max", "private-tmp", "protect-system", "protect-home",
        "no-new-privileges",
    ]

    public var isEmpty: Bool { self == ResourceControls() }
}

/// One `[worker.NAME]` with every default filled in.
public struct WorkerDefinition: Sendable, Hashable {
    public var name: String
    public var exec: [String]
    public var enabled: Bool = true
    public var runOn: RunOn = .primary
    /// Seconds.
    public var restartDelay: Double = 1.0
    public var restartDelayMax: Double = 60.0
    public var stableAfter: Double = 10.0
    public var startLimitBurst: Int = 5
    public var startLimitInterval: Double = 60.0
    public var stopTimeout: Double = 5.0
    public var environment: [String: String] = [:]
    /// nil: the daemon's.
    public var workingDirectory: String? = nil
    public var user: String? = nil
    public var group: String? = nil
    public var resources = ResourceControls()
    /// `log-level`: the worker's own level; nil follows the manager's. Not part of the process
    /// definition: a change takes effect without a restart.
    public var logLevel: LogLevel? = nil
    /// `log-buffer-lines`; nil: the daemon's. Not part of the process definition either.
    public var logBufferLines: Int? = nil
    /// `run-during-maintenance`: keeps running while an inhibitor holds maintenance mode. Not
    /// part of the process definition: a change applies at once, without a restart.
    public var runDuringMaintenance = false
    /// `ready`: when a started process counts as `running`.
    public var ready: ReadyMode = .exec
    /// `start-timeout`, seconds: for `ready = "notify"`, how long to wait for `READY=1`
    /// (0: without limit, as systemd's `TimeoutStartSec=0`).
    public var startTimeout: Double = 90.0
    /// `watchdog`, seconds between required `WATCHDOG=1` messages; 0 is off.
    public var watchdog: Double = 0.0

    /// Whether the worker speaks the notify protocol to the daemon (gets `NOTIFY_SOCKET`).
    public var usesNotify: Bool { Self.usesNotify(ready: ready, watchdog: watchdog) }

    /// The one rule for who gets `NOTIFY_SOCKET`, for definitions and launch specs alike.
    public static func usesNotify(ready: ReadyMode, watchdog: Double) -> Bool { ready == .notify || watchdog > 0 }

    public init(name: String, exec: [String]) {
        self.name = name
        self.exec = exec
    }
}

/// Where a worker was defined: its table's line and the line of each key it sets.
public struct WorkerOrigin: Sendable, Equatable {
    public var file: String
    public var line: Int
    public var keyLines: [String: Int]

    public init(file: String, line: Int, keyLines: [String: Int] = [:]) {
        self.file = file
        self.line = line
        self.keyLines = keyLines
    }
}

/// The whole configuration: daemon settings, HA source and the workers, sorted by name.
public struct Configuration: Sendable, Equatable {
    public var daemon = DaemonSettings()
    public var ha = HASettings()
    public var workers: [WorkerDefinition] = []
    /// Where each worker (by name) was defined, for messages such as `validate(for:)`'s.
    public var origins: [String: WorkerOrigin] = [:]

    public init(daemon: DaemonSettings = DaemonSettings(), ha: HASettings = HASettings(), workers: [WorkerDefinition] = []) {
        self.daemon = daemon
        self.ha = ha
        self.workers = workers.sorted { $0.name < $1.name }
    }

    /// Names match by code points: `String ==` would let U+212A KELVIN SIGN find worker "K".
    public func worker(named name: String) -> WorkerDefinition? {
        workers.first { $0.name.utf8.elementsEqual(name.utf8) }
    }

    /// How many output lines the daemon keeps for each worker: its own `log-buffer-lines`, else
    /// the daemon's.
    public var logBufferLines: [String: Int] {
        Dictionary(workers.map { ($0.name, $0.logBufferLines ?? daemon.logBufferLines) }, uniquingKeysWith: { a, _ in a })
    }

    /// Parses and validates the main file and the drop-in files (in the order given, which should
    /// be name order). Returns every problem found, not only the first.
    ///
    /// The daemon needs `[daemon] workers-directory` before it can list the drop-ins: parse the
    /// main file alone first (`dropIns: []`), then again with the drop-ins.
    /// Drop-in files may only define workers.
    public static func parse(main: SourceFile, dropIns: [SourceFile] = []) -> Result<Configuration, ConfigErrors> {
        var decoder = ConfigDecoder()
        var configuration = Configuration()
        var firstDefinition: [String: (file: String, line: Int)] = [:]
        for (position, file) in ([main] + dropIns).enumerated() {
            let root: TOMLTable
            do {
                root = try parseTOML(utf8: file.bytes)
            } catch {
                decoder.errors.append(ConfigError(file: file.path, line: error.line, message: error.message))
                continue
            }
            decoder.file = file.path
            let workers = decoder.decodeRoot(root, isMain: position == 0, into: &configuration)
            for (definition, origin) in workers {
                if let first = firstDefinition[definition.name] {
                    decoder.errors.append(
                        ConfigError(
                            file: origin.file, line: origin.line, table: "worker.\(definition.name)",
                            message: "worker '\(definition.name)' is already defined at \(first.file):\(first.line)"))
                    continue
                }
                firstDefinition[definition.name] = (origin.file, origin.line)
                configuration.workers.append(definition)
                configuration.origins[definition.name] = origin
            }
        }
        if !decoder.errors.isEmpty { return .failure(ConfigErrors(decoder.errors)) }
        configuration.workers.sort { $0.name < $1.name }
        return .success(configuration)
    }

    /// `[daemon] workers-directory` as the main file writes it (the default when absent), or nil
    /// when it cannot be known: the key is invalid, or the file does not parse and mentions it.
    /// With it the daemon reads and checks the drop-ins even when the main file has errors, so one
    /// answer lists every file's. (A key spelled with escapes in a file that does not parse goes
    /// unseen: the default folder's drop-ins are then checked, which can only add messages.)
    public static func workersDirectory(writtenIn main: SourceFile) -> String? {
        guard let root = try? parseTOML(utf8: main.bytes) else {
            let mentioned = main.bytes.firstRange(of: Array("workers-directory".utf8)) != nil
            return mentioned ? nil : DaemonSettings().workersDirectory
        }
        guard let daemonValue = root["daemon"] else { return DaemonSettings().workersDirectory }
        guard case .table(let daemon) = daemonValue.kind else { return nil }
        var decoder = ConfigDecoder()
        let settings = decoder.decodeDaemon(daemon)
        return decoder.errors.contains { $0.key == "workers-directory" } ? nil : settings.workersDirectory
    }

    /// Checks what the given runner can honour. The process runner cannot apply resource or
    /// sandbox settings and refuses them; the systemd runner needs unit names within systemd's
    /// limit. Call it with the runner actually in use (`auto` checks nothing).
    public func validate(for runner: RunnerKind) -> [ConfigError] {
        var errors: [ConfigError] = []
        for worker in workers {
            let origin = origins[worker.name] ?? WorkerOrigin(file: "<configuration>", line: 0)
            switch runner {
            case .process:
                for key in ResourceControls.keys where worker.resources.isSet(key) {
                    errors.append(
                        ConfigError(
                            file: origin.file, line: origin.keyLines[key] ?? origin.line, table: "worker.\(worker.name)",
                            key: key, message: "'\(key)' needs the systemd runner; the process runner cannot apply it"))
                }
            case .systemd:
                if systemdUnitName(forWorker: worker.name).utf8.count > 255 {
                    errors.append(
                        ConfigError(
                            file: origin.file, line: origin.line, table: "worker.\(worker.name)",
                            message: "the unit name of worker '\(worker.name)' is longer than systemd allows (255 bytes)"))
                }
            case .auto:
                break
            }
        }
        return errors
    }
}

extension ResourceControls {
    func isSet(_ key: String) -> Bool {
        switch key {
        case "memory-max": memoryMax != nil
        case "cpu-quota": cpuQuotaPercent != nil
        case "tasks-max": tasksMax != nil
        case "private-tmp": privateTmp != nil
        case "protect-system": protectSystem != nil
        case "protect-home": protectHome != nil
        case "no-new-privileges": noNewPrivileges != nil
        default: false
        }
    }
}

/// True for 1 to 64 of `[A-Za-z0-9_.@-]`.
public func isValidWorkerName(_ name: String) -> Bool {
    isValidWorkerName(utf8: name.utf8)
}

/// `isValidWorkerName` on bytes, for readers of files that need no String per candidate.
public func isValidWorkerName<Bytes: Collection<UInt8>>(utf8 bytes: Bytes) -> Bool {
    guard (1...64).contains(bytes.count) else { return false }
    return bytes.allSatisfy { byte in
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "@"),
            UInt8(ascii: "-"):
            true
        default:
            false
        }
    }
}

// MARK: - Decoding

private struct ConfigDecoder {
    // The keys each table knows, for "did you mean ...?" (keep them in step with the decoders).
    static let rootKeys = ["daemon", "ha", "worker"]
    static let daemonKeys = ["log-level", "runner", "state-directory", "admin-group", "workers-directory", "log-buffer-lines"]
    static let haKeys = ["source", "instance", "service", "on-lost", "keep-for", "lease"]
    static let workerKeys = [
        "exec", "enabled", "run-on", "restart-delay", "restart-delay-max", "stable-after", "start-limit-burst",
        "start-limit-interval", "stop-timeout", "environment", "working-directory", "user", "group", "log-level",
        "log-buffer-lines", "run-during-maintenance", "ready", "start-timeout", "watchdog",
    ] + ResourceControls.keys

    var file = ""
    var errors: [ConfigError] = []

    mutating func error(_ line: Int, _ table: String?, _ key: String?, _ message: String) {
        errors.append(ConfigError(file: file, line: line, table: table, key: key, message: message))
    }

    mutating func decodeRoot(_ root: TOMLTable, isMain: Bool, into configuration: inout Configuration)
        -> [(WorkerDefinition, WorkerOrigin)]
    {
        var workers: [(WorkerDefinition, WorkerOrigin)] = []
        for (key, value) in root.entries {
            switch key {
            case "daemon", "ha":
                guard case .table(let table) = value.kind else {
                    error(value.line, nil, key, "'\(key)' must be a table [\(key)], not \(value.typeDescription)")
                    continue
                }
                guard isMain else {
                    error(table.line, key, nil, "only [worker.NAME] tables are allowed in a drop-in file")
                    continue
                }
                if key == "daemon" {
                    configuration.daemon = decodeDaemon(table)
                } else {
                    configuration.ha = decodeHA(table)
                }
            case "worker":
                guard case .table(let table) = value.kind else {
                    error(value.line, nil, key, "'worker' must be a table of workers [worker.NAME], not \(value.typeDescription)")
                    continue
                }
                for (name, workerValue) in table.entries {
                    guard case .table(let workerTable) = workerValue.kind else {
                        error(workerValue.line, "worker", name, "'\(name)' must be a worker table [worker.\(name)], not \(workerValue.typeDescription)")
                        continue
                    }
                    if let worker = decodeWorker(name: name, workerTable) {
                        workers.append(worker)
                    }
                }
            default:
                error(value.line, nil, key, "unknown key '\(key)'" + didYouMean(key, among: Self.rootKeys))
            }
        }
        return workers
    }

    mutating func decodeDaemon(_ table: TOMLTable) -> DaemonSettings {
        var settings = DaemonSettings()
        let section = "daemon"
        for (key, value) in table.entries {
            switch key {
            case "log-level":
                if let level = enumeration(value, section, key, parse: LogLevel.init(parsing:)) { settings.logLevel = level }
            case "runner":
                if let runner: RunnerKind = enumeration(value, section, key) { settings.runner = runner }
            case "state-directory":
                if let path = absolutePath(value, section, key) { settings.stateDirectory = path }
            case "admin-group":
                if let group = nonEmptyString(value, section, key) { settings.adminGroup = group }
            case "workers-directory":
                if let path = nonEmptyString(value, section, key) { settings.workersDirectory = path }
            case "log-buffer-lines":
                if let count = integer(value, section, key, in: 0...Int64(DaemonSettings.maxLogBufferLines)) {
                    settings.logBufferLines = Int(count)
                }
            default:
                error(value.line, section, key, "unknown key '\(key)'" + didYouMean(key, among: Self.daemonKeys))
            }
        }
        return settings
    }

    mutating func decodeHA(_ table: TOMLTable) -> HASettings {
        let section = "ha"
        var sourceName = "none"
        var sourceLine = table.line
        var instance: (String, Int)? = nil
        var service: (String, Int)? = nil
        var lease: Int? = nil
        var settings = HASettings()
        for (key, value) in table.entries {
            switch key {
            case "source":
                if let name = string(value, section, key) {
                    if ["none", "keepalived", "dbus", "pacemaker"].contains(name) {
                        sourceName = name
                        sourceLine = value.line
                    } else {
                        error(
                            value.line, section, key,
                            "'source' must be one of \"none\", \"keepalived\", \"dbus\", \"pacemaker\", not \"\(name)\"")
                        sourceName = "invalid"
                    }
                }
            case "instance":
                if let path = string(value, section, key) {
                    if isValidObjectPath(path) {
                        instance = (path, value.line)
                    } else {
                        error(value.line, section, key, "'instance' must be a D-Bus object path, not \"\(path)\"")
                    }
                }
            case "service":
                if let name = string(value, section, key) {
                    if isValidWellKnownBusName(name) {
                        service = (name, value.line)
                    } else {
                        error(value.line, section, key, "'service' must be a well-known D-Bus name, not \"\(name)\"")
                    }
                }
            case "on-lost":
                if let onLost: OnLost = enumeration(value, section, key) { settings.onLost = onLost }
            case "keep-for":
                if let seconds = duration(value, section, key) { settings.keepFor = seconds }
            case "lease":
                if let seconds = duration(value, section, key) {
                    if seconds > 0 {
                        settings.lease = seconds
                        lease = value.line
                    } else {
                        error(value.line, section, key, "'lease' must be more than 0 seconds")
                    }
                }
            default:
                error(value.line, section, key, "unknown key '\(key)'" + didYouMean(key, among: Self.haKeys))
            }
        }
        switch sourceName {
        case "keepalived":
            if let instance {
                settings.source = .keepalived(instance: instance.0)
            } else if table["instance"] == nil {
                error(sourceLine, section, "instance", "source \"keepalived\" needs 'instance' (the VRRP instance's object path)")
            }
        case "dbus":
            settings.source = .dbus(service: service?.0 ?? HASettings.defaultService)
        case "pacemaker":
            settings.source = .pacemaker
        default:
            break
        }
        if sourceName != "keepalived", sourceName != "invalid", let instance {
            error(instance.1, section, "instance", "'instance' applies only to source = \"keepalived\"")
        }
        if sourceName != "dbus", sourceName != "invalid", let service {
            error(service.1, section, "service", "'service' applies only to source = \"dbus\"")
        }
        if sourceName != "pacemaker", sourceName != "invalid", let lease {
            error(lease, section, "lease", "'lease' applies only to source = \"pacemaker\"")
        }
        return settings
    }

    mutating func decodeWorker(name: String, _ table: TOMLTable) -> (WorkerDefinition, WorkerOrigin)? {
        let section = "worker.\(name)"
        let errorsBefore = errors.count
        if !isValidWorkerName(name) {
            error(table.line, section, nil, "invalid worker name '\(name)': use 1 to 64 of A-Z a-z 0-9 _ . @ -")
        }
        var worker = WorkerDefinition(name: name, exec: [])
        var origin = WorkerOrigin(file: file, line: table.line)
        for (key, value) in table.entries {
            origin.keyLines[key] = value.line
            switch key {
            case "exec":
                if let argv = exec(value, section) { worker.exec = argv }
            case "enabled":
                if let flag = bool(value, section, key) { worker.enabled = flag }
            case "run-on":
                if let runOn: RunOn = enumeration(value, section, key) { worker.runOn = runOn }
            case "restart-delay":
                if let seconds = duration(value, section, key) { worker.restartDelay = seconds }
            case "restart-delay-max":
                if let seconds = duration(value, section, key) { worker.restartDelayMax = seconds }
            case "stable-after":
                if let seconds = duration(value, section, key) { worker.stableAfter = seconds }
            case "start-limit-burst":
                if let count = integer(value, section, key, in: 0...Int64(Int32.max)) { worker.startLimitBurst = Int(count) }
            case "start-limit-interval":
                if let seconds = duration(value, section, key) {
                    if seconds > 0 {
                        worker.startLimitInterval = seconds
                    } else {
                        error(value.line, section, key, "'start-limit-interval' must be greater than 0")
                    }
                }
            case "stop-timeout":
                if let seconds = duration(value, section, key) { worker.stopTimeout = seconds }
            case "environment":
                if let environment = environment(value, section) { worker.environment = environment }
            case "working-directory":
                if let path = absolutePath(value, section, key) { worker.workingDirectory = path }
            case "user":
                if let user = nonEmptyString(value, section, key) { worker.user = user }
            case "group":
                if let group = nonEmptyString(value, section, key) { worker.group = group }
            case "log-level":
                if let level = enumeration(value, section, key, parse: LogLevel.init(parsing:)) { worker.logLevel = level }
            case "log-buffer-lines":
                if let count = integer(value, section, key, in: 0...Int64(DaemonSettings.maxLogBufferLines)) {
                    worker.logBufferLines = Int(count)
                }
            case "run-during-maintenance":
                if let flag = bool(value, section, key) { worker.runDuringMaintenance = flag }
            case "ready":
                if let mode: ReadyMode = enumeration(value, section, key) { worker.ready = mode }
            case "start-timeout":
                if let seconds = duration(value, section, key) { worker.startTimeout = seconds }
            case "watchdog":
                if let seconds = duration(value, section, key) { worker.watchdog = seconds }
            case "memory-max":
                if let bytes = byteSize(value, section, key) { worker.resources.memoryMax = bytes }
            case "cpu-quota":
                if let percent = cpuQuota(value, section, key) { worker.resources.cpuQuotaPercent = percent }
            case "tasks-max":
                if let count = integer(value, section, key, in: 1...Int64.max) { worker.resources.tasksMax = UInt64(count) }
            case "private-tmp":
                if let flag = bool(value, section, key) { worker.resources.privateTmp = flag }
            case "no-new-privileges":
                if let flag = bool(value, section, key) { worker.resources.noNewPrivileges = flag }
            case "protect-system":
                if let mode: ProtectSystem = boolOrMode(value, section, key) { worker.resources.protectSystem = mode }
            case "protect-home":
                if let mode: ProtectHome = boolOrMode(value, section, key) { worker.resources.protectHome = mode }
            default:
                if case .table = value.kind {
                    error(value.line, section, key, "unknown key '\(key)' (quote a worker name that contains dots: [worker.\"\(name).\(key)\"])")
                } else {
                    error(value.line, section, key, "unknown key '\(key)'" + didYouMean(key, among: Self.workerKeys))
                }
            }
        }
        if table["exec"] == nil {
            error(table.line, section, "exec", "missing required key 'exec'")
        }
        if let maxLine = origin.keyLines["restart-delay-max"] ?? origin.keyLines["restart-delay"],
            worker.restartDelayMax < worker.restartDelay
        {
            error(
                maxLine, section, "restart-delay-max",
                "'restart-delay-max' (\(worker.restartDelayMax)) must not be less than 'restart-delay' (\(worker.restartDelay))")
        }
        return errors.count == errorsBefore ? (worker, origin) : nil
    }

    // MARK: Typed readers; each reports its own error and returns nil on failure.

    mutating func string(_ value: TOMLValue, _ table: String, _ key: String) -> String? {
        guard case .string(let text) = value.kind else {
            error(value.line, table, key, "'\(key)' must be a string, not \(value.typeDescription)")
            return nil
        }
        if text.utf8.contains(0) {
            error(value.line, table, key, "'\(key)' must not contain a NUL character")
            return nil
        }
        return text
    }

    mutating func nonEmptyString(_ value: TOMLValue, _ table: String, _ key: String) -> String? {
        guard let text = string(value, table, key) else { return nil }
        if text.isEmpty {
            error(value.line, table, key, "'\(key)' must not be empty")
            return nil
        }
        return text
    }

    mutating func absolutePath(_ value: TOMLValue, _ table: String, _ key: String) -> String? {
        guard let text = string(value, table, key) else { return nil }
        guard text.hasPrefix("/") else {
            error(value.line, table, key, "'\(key)' must be an absolute path, not \"\(text)\"")
            return nil
        }
        return text
    }

    /// One of `E`'s values, as `parse` reads the text (default: the exact raw value).
    mutating func enumeration<E: RawRepresentable & CaseIterable>(
        _ value: TOMLValue, _ table: String, _ key: String, parse: (String) -> E? = E.init(rawValue:)
    ) -> E? where E.RawValue == String {
        guard let text = string(value, table, key) else { return nil }
        guard let result = parse(text) else {
            let choices = E.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
            error(value.line, table, key, "'\(key)' must be one of \(choices), not \"\(text)\"")
            return nil
        }
        return result
    }

    mutating func bool(_ value: TOMLValue, _ table: String, _ key: String) -> Bool? {
        guard case .boolean(let flag) = value.kind else {
            error(value.line, table, key, "'\(key)' must be true or false, not \(value.typeDescription)")
            return nil
        }
        return flag
    }

    mutating func integer(_ value: TOMLValue, _ table: String, _ key: String, in range: ClosedRange<Int64>) -> Int64? {
        guard case .integer(let number) = value.kind else {
            error(value.line, table, key, "'\(key)' must be an integer, not \(value.typeDescription)")
            return nil
        }
        guard range.contains(number) else {
            let bound = range.lowerBound == 0 ? "must not be negative" : "must be at least \(range.lowerBound)"
            error(value.line, table, key, "'\(key)' \(number > range.upperBound ? "is too large" : bound)")
            return nil
        }
        return number
    }

    /// Seconds: an integer or a float, finite and not negative.
    mutating func duration(_ value: TOMLValue, _ table: String, _ key: String) -> Double? {
        let seconds: Double
        switch value.kind {
        case .integer(let number): seconds = Double(number)
        case .float(let number): seconds = number
        default:
            error(value.line, table, key, "'\(key)' must be a number of seconds, not \(value.typeDescription)")
            return nil
        }
        guard seconds.isFinite else {
            error(value.line, table, key, "'\(key)' must be a finite number of seconds")
            return nil
        }
        guard seconds >= 0 else {
            error(value.line, table, key, "'\(key)' must not be negative")
            return nil
        }
        return seconds
    }

    mutating func exec(_ value: TOMLValue, _ table: String) -> [String]? {
        guard case .array(let elements) = value.kind else {
            error(value.line, table, "exec", "'exec' must be an array of strings (the argv), not \(value.typeDescription)")
            return nil
        }
        guard !elements.isEmpty else {
            error(value.line, table, "exec", "'exec' must not be empty")
            return nil
        }
        var argv: [String] = []
        for element in elements {
            guard case .string(let argument) = element.kind else {
                error(element.line, table, "exec", "'exec' must contain only strings, not \(element.typeDescription)")
                return nil
            }
            if argument.utf8.contains(0) {
                error(element.line, table, "exec", "'exec' must not contain a NUL character")
                return nil
            }
            argv.append(argument)
        }
        guard argv[0].hasPrefix("/") else {
            error(value.line, table, "exec", "'exec[0]' must be an absolute path, not \"\(argv[0])\"")
            return nil
        }
        return argv
    }

    mutating func environment(_ value: TOMLValue, _ table: String) -> [String: String]? {
        guard case .table(let variables) = value.kind else {
            error(value.line, table, "environment", "'environment' must be a table of strings, not \(value.typeDescription)")
            return nil
        }
        var result: [String: String] = [:]
        var valid = true
        for (name, variable) in variables.entries {
            guard case .string(let text) = variable.kind else {
                error(variable.line, table, "environment", "environment variable '\(name)' must be a string, not \(variable.typeDescription)")
                valid = false
                continue
            }
            if name.isEmpty || name.utf8.contains(UInt8(ascii: "=")) || name.utf8.contains(0) || text.utf8.contains(0) {
                error(variable.line, table, "environment", "invalid environment variable '\(name)'")
                valid = false
            } else if ["BGWORKER_NAME", "BGWORKER_LOG_LEVEL", "BGWORKER_OBJECT_PATH"].contains(name) {
                error(variable.line, table, "environment", "environment variable '\(name)' is set by bgworkerd")
                valid = false
            } else if result[name] != nil {
                // TOML found the names different (code points); a String-keyed dictionary would
                // merge the canonically equivalent ones and silently drop a variable.
                error(
                    variable.line, table, "environment",
                    "environment variable '\(name)' differs from another one only by Unicode normalization; use one spelling")
                valid = false
            }
            result[name] = text
        }
        return valid ? result : nil
    }

    /// Bytes: an integer, or a string of digits with an optional K, M, G or T suffix (base 1024).
    mutating func byteSize(_ value: TOMLValue, _ table: String, _ key: String) -> UInt64? {
        switch value.kind {
        case .integer(let number):
            guard number > 0 else {
                error(value.line, table, key, "'\(key)' must be greater than 0")
                return nil
            }
            return UInt64(number)
        case .string(let text):
            if let bytes = parseByteSize(text) { return bytes }
            error(value.line, table, key, "'\(key)' must be bytes, e.g. 536870912 or \"512M\" (suffixes K, M, G, T), not \"\(text)\"")
            return nil
        default:
            error(value.line, table, key, "'\(key)' must be an integer or a string like \"512M\", not \(value.typeDescription)")
            return nil
        }
    }

    /// Percent: "50%" or a number; greater than 0 and finite; may exceed 100.
    mutating func cpuQuota(_ value: TOMLValue, _ table: String, _ key: String) -> Double? {
        var percent: Double?
        switch value.kind {
        case .integer(let number): percent = Double(number)
        case .float(let number): percent = number
        case .string(let text) where text.hasSuffix("%"): percent = Double(text.dropLast())
        default: percent = nil
        }
        guard let percent, percent.isFinite, percent > 0 else {
            error(value.line, table, key, "'\(key)' must be a percentage greater than 0, e.g. \"50%\" or 50.0")
            return nil
        }
        return percent
    }

    mutating func boolOrMode<Mode: RawRepresentable>(_ value: TOMLValue, _ table: String, _ key: String) -> Mode?
    where Mode.RawValue == String {
        switch value.kind {
        case .boolean(let flag): return Mode(rawValue: flag ? "true" : "false")
        case .string(let text):
            if let mode = Mode(rawValue: text) { return mode }
        default: break
        }
        let choices = key == "protect-system" ? "true, false, \"full\" or \"strict\"" : "true, false, \"read-only\" or \"tmpfs\""
        error(value.line, table, key, "'\(key)' must be \(choices)")
        return nil
    }
}

func parseByteSize(_ text: String) -> UInt64? {
    var digits = Substring(text)
    var multiplier: UInt64 = 1
    if let last = digits.last, let power = ["K": 1, "M": 2, "G": 3, "T": 4][String(last).uppercased()] {
        multiplier = 1 << (10 * UInt64(power))
        digits = digits.dropLast()
    }
    guard !digits.isEmpty, digits.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let number = UInt64(digits) else {
        return nil
    }
    let (bytes, overflow) = number.multipliedReportingOverflow(by: multiplier)
    guard !overflow, bytes > 0 else { return nil }
    return bytes
}

/// A D-Bus object path: `/`, or `/`-separated non-empty elements of `[A-Za-z0-9_]`.
public func isValidObjectPath(_ path: String) -> Bool {
    guard path.hasPrefix("/") else { return false }
    if path == "/" { return true }
    let elements = path.utf8.dropFirst().split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
    return elements.allSatisfy { element in
        !element.isEmpty && element.allSatisfy { isAlphanumeric($0) || $0 == UInt8(ascii: "_") }
    }
}

/// A well-known D-Bus name: 2+ dot-separated elements of `[A-Za-z0-9_-]`, none starting with a
/// digit, at most 255 bytes.
public func isValidWellKnownBusName(_ name: String) -> Bool {
    guard name.utf8.count <= 255, !name.hasPrefix(":") else { return false }
    let elements = name.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
    guard elements.count >= 2 else { return false }
    return elements.allSatisfy { element in
        guard let first = element.first, !(first >= 0x30 && first <= 0x39) else { return false }
        return element.allSatisfy { isAlphanumeric($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }
    }
}

func isAlphanumeric(_ byte: UInt8) -> Bool {
    (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
}
