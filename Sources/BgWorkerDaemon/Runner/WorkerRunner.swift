import BgWorkerCore

// The seam between the supervisor and the two ways of running a worker (child processes, systemd
// transient units). The supervisor sees only this protocol, so it cannot tell the runners apart.

import BgWorkerCore

/// Everything a runner needs to start one worker. The runner adds nothing implicit: `environment`
/// is the worker's complete environment (the supervisor adds `BGWORKER_NAME` and
/// `BGWORKER_LOG_LEVEL`), and a nil `workingDirectory`, `user` or `group` means "the daemon's".
public struct LaunchSpec: Sendable, Equatable {
    /// The worker's name (`[A-Za-z0-9_.@-]{1,64}`); unique among running workers of one runner.
    public var name: String
    /// `argv[0]` is the absolute path of the program; it is executed as given (no PATH search).
    public var argv: [String]
    public var environment: [String: String]
    public var workingDirectory: String?
    /// A user name or a numeric uid. The worker gets that user's primary group and supplementary
    /// groups unless `group` is also given.
    public var user: String?
    /// A group name or a numeric gid.
    public var group: String?
    /// Time between SIGTERM and SIGKILL when the worker is stopped.
    public var stopTimeout: Duration
    /// A hash of the worker's definition: the systemd runner stores it on the unit so that a new
    /// daemon adopts only units that still match their definition.
    public var definitionHash: UInt64
    /// Resource and sandbox settings (memory-max, cpu-quota, ...). Only the systemd runner can
    /// apply them; the configuration refuses them for the process runner (`validate(for:)`).
    public var resources: ResourceControls

    public init(
        name: String,
        argv: [String],
        environment: [String: String] = [:],
        workingDirectory: String? = nil,
        user: String? = nil,
        group: String? = nil,
        stopTimeout: Duration = .seconds(5),
        definitionHash: UInt64 = 0,
        resources: ResourceControls = ResourceControls()
    ) {
        self.name = name
        self.argv = argv
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.user = user
        self.group = group
        self.stopTimeout = stopTimeout
        self.definitionHash = definitionHash
        self.resources = resources
    }
}

/// What a runner reports on its own, without being asked.
public enum RunnerEvent: Sendable, Equatable {
    /// The worker's main process ended (and, for the process runner, the rest of its process
    /// group was killed). Comes once for every successful `start` and every adopted worker.
    case exited(name: String, pid: Int32, status: WorkerExit)
}

/// Why a runner could not do what it was asked. Codes are open so that runners can add their own.
public struct RunnerError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public var rawValue: String
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The spec cannot be run: empty argv, a name already running, a user that does not exist.
        public static let invalidSpec = Code("invalid-spec")
        /// A worker of that name runs already.
        public static let alreadyRunning = Code("already-running")
        /// The OS refused a step of starting the process (pipe, clone, chdir, setuid, execve...).
        public static let spawnFailed = Code("spawn-failed")
        /// The runner has been shut down.
        public static let shutDown = Code("shut-down")
        /// The runner itself could not be set up (threads, epoll, its runtime file).
        public static let unavailable = Code("unavailable")
        /// Another live daemon holds the runtime directory's record of process groups: one
        /// process runner per runtime directory (docs/process-runner.md).
        public static let runtimeDirectoryInUse = Code("runtime-directory-in-use")
    }

    public var code: Code
    /// The worker concerned; nil for a failure of the runner itself (e.g. while it starts).
    public var worker: String?
    /// What failed, e.g. `execve /usr/bin/nothing` or `user "nobody2"`.
    public var context: String
    /// The OS error, when there is one.
    public var errno: Int32?

    public init(_ code: Code, worker: String?, context: String, errno: Int32? = nil) {
        self.code = code
        self.worker = worker
        self.context = context
        self.errno = errno
    }

    /// e.g. `worker "db-sync": execve /usr/bin/nothing: No such file or directory`.
    public var description: String {
        var text = worker.map { "worker \"\($0)\": \(context)" } ?? "runner: \(context)"
        if let errno { text += ": \(errnoText(errno))" }
        return text
    }
}

/// Runs workers. Both runners implement it; the supervisor cannot tell them apart.
///
/// Starts and stops are submitted without waiting and carried out in the order submitted: a
/// stop never overtakes the start submitted before it, so a caller that submits from one actor
/// needs no queue of its own, and no task has to be woken to hand a request over.
public protocol WorkerRunner: Sendable {
    /// `process` or `systemd` (the manager's `Runner` property).
    var kind: String { get }
    /// Exits of started and adopted workers, in the order they happen. One consumer; or none,
    /// once `deliverEvents(to:)` was called.
    var events: AsyncStream<RunnerEvent> { get }
    /// From now on, give every event to `handler` (in order, on a thread of the runner) instead
    /// of `events`. Call it once, before the first start or adoption. A runner that offers a
    /// `callerExecutor` calls `handler` on that executor's thread, between its jobs: a caller
    /// running on that executor may treat the handler as isolated to it.
    func deliverEvents(to handler: @escaping @Sendable (RunnerEvent) -> Void)
    /// Queues a start. `answer` is called once, on any thread (a runner's own, or the caller's
    /// for a spec refused at once), with the pid once the program has been executed, or with the
    /// step and OS error that failed (e.g. `execve /x: No such file or directory`).
    func submitStart(_ spec: LaunchSpec, answer: @escaping @Sendable (Result<Int32, RunnerError>) -> Void)
    /// Queues a stop: SIGTERM to the worker (all of it: its process group or its unit), and
    /// SIGKILL after its `stopTimeout`. `done` is called once SIGTERM is sent; the exit arrives
    /// as an event. Does nothing (but call `done`) for a name that does not run.
    func submitStop(name: String, done: @escaping @Sendable () -> Void)
    /// Takes over workers that still run from a previous daemon (systemd units whose definition
    /// hash matches); returns their pids by name. Their exits then arrive as events. Changes
    /// nothing that runs (the daemon calls it before it owns its bus name): what is found but not
    /// adopted is stopped by `finishAdoption`.
    func adopt(_ specs: [LaunchSpec]) async -> [String: Int32]
    /// Once the daemon owns its bus name: stops what `adopt` found and did not take over (units
    /// of workers that changed or are gone), and returns once it is gone, so the new definitions
    /// can start.
    func finishAdoption() async
    /// Forgets every worker without stopping any (the daemon did not get its bus name: another
    /// daemon runs, and the adopted workers are its own). The runner then refuses to start more.
    func release() async
    /// Stops every worker in parallel and returns when all are gone; the runner then refuses to
    /// start more and finishes `events`.
    func shutdown() async
    /// A serial executor for the runner's one caller (the supervisor) to run on, where that saves
    /// thread switches: the process runner's monitor thread, so that an exit reaches the
    /// supervisor and the restart it decides reaches the spawn on the same thread. nil: none.
    /// Asking for it commits the runner to serve that executor for the life of the process.
    var callerExecutor: (any SerialExecutor)? { get }
    /// The workers' last output lines where the runner sees them (the process runner's pump);
    /// nil where it does not (the systemd runner: units write to the journal).
    var logs: WorkerLogBuffers? { get }
}

extension WorkerRunner {
    public var callerExecutor: (any SerialExecutor)? { nil }
    public var logs: WorkerLogBuffers? { nil }

    /// For runners that adopt nothing.
    public func finishAdoption() async {}

    /// For runners that adopt nothing: nothing runs before the first start.
    public func release() async { await shutdown() }

    /// For runners that only have `events`: a task forwards them.
    public func deliverEvents(to handler: @escaping @Sendable (RunnerEvent) -> Void) {
        let events = self.events
        Task {
            for await event in events { handler(event) }
        }
    }
}

extension WorkerRunner {
    /// Starts a worker and waits for the answer (see `submitStart`).
    public func start(_ spec: LaunchSpec) async throws(RunnerError) -> Int32 {
        try await withCheckedContinuation { continuation in
            submitStart(spec) { continuation.resume(returning: $0) }
        }.get()
    }

    /// Stops a worker; returns once SIGTERM is sent (see `submitStop`).
    public func stop(name: String) async {
        await withCheckedContinuation { continuation in
            submitStop(name: name) { continuation.resume() }
        }
    }
}
