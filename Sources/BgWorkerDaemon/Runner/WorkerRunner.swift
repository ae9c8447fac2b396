// The seam between the supervisor and the two ways of running a worker (child processes, systemd
// transient units). The supervisor sees only this protocol, so it cannot tell the runners apart.

import BgWorkerCore
import Synchronization

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
    /// `user` and `group` resolved to ids ahead of the spawn (the process runner uses them
    /// instead of looking the names up on the event loop); nil: resolved at the spawn.
    public var credentials: WorkerCredentials.Resolution?
    /// `ready`: with `notify` the process counts as running once it sends `READY=1`.
    public var ready: ReadyMode
    /// Seconds to wait for `READY=1` (`ready = notify`); 0: without limit.
    public var startTimeout: Double
    /// Seconds between required `WATCHDOG=1`; 0 is off.
    public var watchdog: Double

    /// Whether the worker speaks the notify protocol (gets `NOTIFY_SOCKET`).
    public var usesNotify: Bool { WorkerDefinition.usesNotify(ready: ready, watchdog: watchdog) }

    public init(
        name: String,
        argv: [String],
        environment: [String: String] = [:],
        workingDirectory: String? = nil,
        user: String? = nil,
        group: String? = nil,
        stopTimeout: Duration = .seconds(5),
        definitionHash: UInt64 = 0,
        resources: ResourceControls = ResourceControls(),
        credentials: WorkerCredentials.Resolution? = nil,
        ready: ReadyMode = .exec,
        startTimeout: Double = 90,
        watchdog: Double = 0
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
        self.credentials = credentials
        self.ready = ready
        self.startTimeout = startTimeout
        self.watchdog = watchdog
    }
}

/// What a runner reports on its own, without being asked.
public enum RunnerEvent: Sendable, Equatable {
    /// The worker's main process ended (and, for the process runner, the rest of its process
    /// group was killed). Comes once for every successful `start` and every adopted worker.
    case exited(name: String, pid: Int32, status: WorkerExit)
    /// The worker's process sent `READY=1` (the systemd runner: its `Type=notify` unit became
    /// active). Only for a `ready = notify` worker while starting, or after `reloading`.
    case ready(name: String, pid: Int32)
    /// The worker's process sent `RELOADING=1`.
    case reloading(name: String, pid: Int32)
    /// The worker's process sent `STOPPING=1`.
    case stopping(name: String, pid: Int32)
    /// The worker's `STATUS=` text (the systemd runner: its unit's `StatusText`).
    case status(name: String, pid: Int32, text: String)
    /// A notify datagram was refused or dropped (a sender outside every notify worker, too big,
    /// carrying fds): for the log. At most one a second; the rest are counted.
    case notifyRefused(pid: Int32?, reason: String)
    /// How many notify datagrams were refused in the last second without a `notifyRefused` each.
    case notifyRefusalsCounted(Int)
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
        /// The daemon is out of file descriptors (EMFILE/ENFILE): retrying cannot help until
        /// the limit is raised or other workers stop, so the worker fails instead of backing off.
        public static let outOfFileDescriptors = Code("out-of-file-descriptors")
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
/// A runner works on an `EventLoop` (`loop`), the same loop its caller (the supervisor) runs
/// on: its answers and events are called on the loop's thread, each as a step of its own (never
/// nested inside a call the caller made), so a caller isolated to the loop may treat them as
/// isolated. Starts and stops are carried out in the order submitted: a stop never overtakes the
/// start submitted before it. Submitted from the loop thread, the process runner carries a start
/// out at once (the spawn of a restart waits for nothing); its answer follows as a loop job.
public protocol WorkerRunner: Sendable {
    /// `process` or `systemd` (the manager's `Runner` property).
    var kind: String { get }
    /// The loop the runner works on, and its caller's executor (docs/design.md).
    var loop: EventLoop { get }
    /// Where exits of started and adopted workers go, in the order they happen: called on the
    /// loop thread, one call per event, never nested in a call of the caller. Set it once,
    /// before the first start or adoption; events that come earlier are kept until then.
    /// `ended` is called (on the loop thread) once the runner has shut down: no event follows.
    func setEventHandler(_ handler: @escaping @Sendable (RunnerEvent) -> Void, ended: @escaping @Sendable () -> Void)
    /// Queues a start. `answer` is called once, on the loop thread (never nested in this call),
    /// with the pid once the program has been executed, or with the step and OS error that
    /// failed (e.g. `execve /x: No such file or directory`).
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
    /// start more and reports no more events.
    func shutdown() async
    /// The workers' last output lines where the runner sees them (the process runner's pump);
    /// nil where it does not (the systemd runner: units write to the journal).
    var logs: WorkerLogBuffers? { get }
}

extension WorkerRunner {
    public var logs: WorkerLogBuffers? { nil }

    public func setEventHandler(_ handler: @escaping @Sendable (RunnerEvent) -> Void) {
        setEventHandler(handler, ended: {})
    }

    /// The events as a stream that ends when the runner has shut down, for tools and tests that
    /// consume them from a task (it sets the runner's one handler; the daemon sets its own).
    public func eventStream() -> AsyncStream<RunnerEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: RunnerEvent.self)
        setEventHandler({ continuation.yield($0) }, ended: { continuation.finish() })
        return stream
    }

    /// For runners that adopt nothing.
    public func finishAdoption() async {}

    /// For runners that adopt nothing: nothing runs before the first start.
    public func release() async { await shutdown() }
}

/// Hands a runner's events to its handler on the loop thread, each as a loop job of its own;
/// keeps them until a handler is set.
final class RunnerEventSink: Sendable {
    private struct State {
        var handler: EventHandler?
        var ended: EndHandler?
        var early: [RunnerEvent] = []
        var finished = false
    }
    /// Boxed, as `EventHandler`.
    private struct EndHandler {
        let call: @Sendable () -> Void
    }
    private let loop: EventLoop
    private let state = Mutex(State())

    init(loop: EventLoop) { self.loop = loop }

    func setHandler(_ handler: @escaping @Sendable (RunnerEvent) -> Void, ended: @escaping @Sendable () -> Void) {
        let boxed = EventHandler(deliver: handler)
        let (early, finished) = state.withLock { state -> ([RunnerEvent], Bool) in
            state.handler = boxed
            state.ended = EndHandler(call: ended)
            defer { state.early = [] }
            return (state.early, state.finished)
        }
        for event in early { loop.execute { boxed.deliver(event) } }
        if finished { loop.execute(ended) }
    }

    /// From any thread: the event reaches the handler as a loop job (after what is queued).
    func post(_ event: RunnerEvent) {
        let handler = state.withLock { state -> EventHandler? in
            guard !state.finished else { return nil }
            if state.handler == nil { state.early.append(event) }
            return state.handler
        }
        if let handler { loop.execute { handler.deliver(event) } }
    }

    /// On the loop thread, from a step of the loop that is not nested in the caller's code (a
    /// pidfd's handler): the event is delivered at once, with no trip through the queue.
    func deliverNow(_ event: RunnerEvent) {
        loop.preconditionOnLoopThread("(RunnerEventSink.deliverNow)")
        let handler = state.withLock { state -> EventHandler? in
            guard !state.finished else { return nil }
            if state.handler == nil { state.early.append(event) }
            return state.handler
        }
        handler?.deliver(event)
    }

    /// No event follows; the end handler is called as a loop job (after the events posted).
    func finish() {
        let ended = state.withLock { state -> EndHandler? in
            guard !state.finished else { return nil }
            state.finished = true
            return state.ended
        }
        if let ended { loop.execute(ended.call) }
    }
}

/// A runner's event handler, boxed. Swift 6.3.1 stores a bare closure in a `Mutex` at the
/// generic abstraction and wraps it in two reabstraction thunks on every `withLock { $0 }`, for
/// good: after ~14,400 exits the handler's call nested deep enough to overflow the thread's
/// stack (issue 8). A struct field keeps its own abstraction, so no thunk is ever added.
struct EventHandler: Sendable {
    let deliver: @Sendable (RunnerEvent) -> Void
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
