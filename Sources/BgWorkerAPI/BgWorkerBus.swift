// The names of bgworkerd's public D-Bus contract (the project's interface contract and dbus/*.xml),
// in one place for every program that speaks it: the daemon, bgworkerctl, the example worker, the
// bench and the tests. Depends on the standard library only.

/// bgworkerd's names on the bus.
public enum BgWorkerBus {
    /// The well-known bus name.
    public static let busName = "org.example.BgWorker"
    /// The manager object.
    public static let managerPath = "/org/example/BgWorker"
    public static let managerInterface = "org.example.BgWorker"
    public static let workerInterface = "org.example.BgWorker.Worker"
    /// Worker objects are `workerPathPrefix` + `objectPathLabel(forWorker:)`.
    public static let workerPathPrefix = "/org/example/BgWorker/worker/"

    /// `/org/example/BgWorker/worker/<label>`.
    public static func workerPath(_ name: String) -> String {
        workerPathPrefix + objectPathLabel(forWorker: name)
    }

    /// The worker name of a worker object's path; nil for any other path.
    public static func workerName(fromPath path: String) -> String? {
        guard path.hasPrefix(workerPathPrefix) else { return nil }
        return BgWorkerAPI.workerName(fromObjectPathLabel: String(path.dropFirst(workerPathPrefix.count)))
    }

    /// `org.example.BgWorker.Error.<Name>`.
    public enum ErrorName {
        public static let prefix = "org.example.BgWorker.Error."
        public static let noSuchWorker = "org.example.BgWorker.Error.NoSuchWorker"
        public static let invalidConfig = "org.example.BgWorker.Error.InvalidConfig"
        public static let disabled = "org.example.BgWorker.Error.Disabled"
        public static let stateNotSaved = "org.example.BgWorker.Error.StateNotSaved"
        public static let notSupported = "org.example.BgWorker.Error.NotSupported"
    }

    /// Signals of the manager interface.
    public enum Signal {
        public static let workerStateChanged = "WorkerStateChanged"
        public static let haRoleChanged = "HARoleChanged"
    }

    /// Properties of the manager interface.
    public enum ManagerProperty {
        public static let version = "Version"
        public static let haRole = "HARole"
        public static let logLevel = "LogLevel"
        public static let runner = "Runner"
        public static let maintenance = "Maintenance"
    }

    /// Properties of the worker interface.
    public enum WorkerProperty {
        public static let name = "Name"
        public static let state = "State"
        public static let enabled = "Enabled"
        public static let pid = "Pid"
        public static let restarts = "Restarts"
        public static let lastExit = "LastExit"
        public static let runOn = "RunOn"
        public static let stateChangedAt = "StateChangedAt"
        public static let logLevel = "LogLevel"
        public static let effectiveLogLevel = "EffectiveLogLevel"
        public static let statusText = "StatusText"
        public static let readyAt = "ReadyAt"
        public static let stateReason = "StateReason"
    }
}
