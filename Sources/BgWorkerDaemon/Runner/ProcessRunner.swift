// The embedded runner: each worker is a child process of the daemon in its own process group.
//
// One dedicated thread (the monitor) spawns every worker and watches them: PR_SET_PDEATHSIG fires
// when the *thread* that spawned a process exits, so spawning happens on a thread that lives as
// long as the workers (never on the cooperative pool or a Dispatch worker, which may retire).
// The monitor's epoll loop waits on an eventfd (requests), each worker's pidfd (its exit; reaped
// with waitid on that pidfd only, so other children of the process are never touched, and no
// SIGCHLD handler is needed) and a timerfd per stopping worker (SIGKILL after the stop timeout).
// A second thread reads the workers' output (WorkerOutputPump).
import BgWorkerCore
import CShims
import Glibc
import Synchronization

public final class ProcessRunner: WorkerRunner {
    public let kind = "process"
    public let events: AsyncStream<RunnerEvent>
    /// Every worker's last output lines; the pump writes them.
    public let logs: WorkerLogBuffers? = WorkerLogBuffers()
    private let monitor: ProcessMonitor

    /// Starts the runner's threads.
    /// - Parameters:
    ///   - processGroupFile: the runtime file where live workers' process groups are written
    ///     (e.g. `/run/bgworker/process-groups`), locked by this runner until it is shut down.
    ///     Groups recorded there by a previous daemon that still exist are killed now, before
    ///     anything starts. A file locked by a live runner is refused (`.runtimeDirectoryInUse`).
    ///     nil: no record (tests).
    ///   - output: where workers' stdout and stderr lines go.
    public init(
        processGroupFile: String? = nil, output: WorkerOutputDestination = .automatic
    ) throws(RunnerError) {
        var record: ProcessGroupRecord?
        if let processGroupFile {
            do {
                record = try ProcessGroupRecord(path: processGroupFile)
            } catch {
                if case .inUse = error.reason {
                    throw RunnerError(.runtimeDirectoryInUse, worker: nil, context: error.description)
                }
                throw RunnerError(.unavailable, worker: nil, context: error.description)
            }
        }
        let (stream, continuation) = AsyncStream.makeStream(of: RunnerEvent.self)
        events = stream
        do {
            monitor = try ProcessMonitor(groupRecord: record, output: output, logs: logs, events: continuation)
        } catch {
            throw RunnerError(.unavailable, worker: nil, context: error.description)
        }
    }

    /// The process groups a previous daemon left that this runner killed when it started.
    public var killedLeftoverGroups: [Int32] { monitor.killedLeftoverGroups }

    public func submitStart(_ spec: LaunchSpec, answer: @escaping @Sendable (Result<Int32, RunnerError>) -> Void) {
        let launch: PreparedLaunch
        do {
            launch = try PreparedLaunch(spec)
        } catch {
            return answer(.failure(error))
        }
        monitor.submit(.start(launch, answer))
    }

    public func submitStop(name: String, done: @escaping @Sendable () -> Void) {
        monitor.submit(.stop(name, done))
    }

    public func adopt(_ specs: [LaunchSpec]) async -> [String: Int32] { [:] }

    public func deliverEvents(to handler: @escaping @Sendable (RunnerEvent) -> Void) {
        monitor.eventHandler.withLock { $0 = EventHandler(deliver: handler) }
    }

    /// The monitor thread: a supervisor that runs on it hears of an exit and hands over the
    /// restart without a thread switch (see `WorkerRunner.callerExecutor`).
    public var callerExecutor: (any SerialExecutor)? {
        monitor.servesJobs.store(true, ordering: .relaxed)
        return monitor
    }

    public func shutdown() async {
        await withCheckedContinuation { continuation in
            monitor.submit(.shutdown({ continuation.resume() }))
        }
    }
}

/// The handler of `deliverEvents`, boxed. Swift 6.3.1 stores a bare closure in a `Mutex` at the
/// generic abstraction and wraps it in two reabstraction thunks on every `withLock { $0 }`, for
/// good: after ~14,400 exits the handler's call nested deep enough to overflow the monitor's
/// stack (issue 8). A struct field keeps its own abstraction, so no thunk is ever added.
struct EventHandler: Sendable {
    let deliver: @Sendable (RunnerEvent) -> Void
}

/// A worker the monitor runs. Its pid is also its process group id.
private struct RunningWorker {
    var name: String
    var pid: Int32
    var pidfd: Int32
    /// Its slot in the record of process groups.
    var slot: Int?
    var stopTimeout: Duration
    /// The timerfd that sends SIGKILL, while stopping.
    var killTimer: Int32?
    /// SIGTERM has been sent.
    var stopping = false
}

/// A worker whose main process is reaped, until every other process of its group is gone too.
private struct DrainingGroup {
    var name: String
    var slot: Int?
    var event: RunnerEvent
    /// pidfds of the group's processes that have not exited yet.
    var members: Set<Int32>
}

/// The monitor thread and everything it owns. It is also a serial executor: its caller (the
/// supervisor) may run its jobs on this thread, between two rounds of events.
private final class ProcessMonitor: SerialExecutor, @unchecked Sendable {
    // Safety of @unchecked Sendable: `pending`, `jobs`, `eventHandler` are Mutexes, `servesJobs`
    // and `monitorThread` Atomics; `wake`, `epoll`, `devNull`, `eventSink`, `pump`,
    // `killedLeftoverGroups` are immutable after init. Every `var` below, and `groupRecord` (a
    // class not made for sharing), is touched only on the monitor thread, which starts at the
    // end of init.

    enum Request {
        case start(PreparedLaunch, @Sendable (Result<Int32, RunnerError>) -> Void)
        case stop(String, @Sendable () -> Void)
        case shutdown(@Sendable () -> Void)

        /// Answers a request that came after the monitor ended.
        func refuse() {
            switch self {
            case .start(let launch, let answer):
                answer(.failure(RunnerError(.shutDown, worker: launch.spec.name, context: "the runner is shut down")))
            case .stop(_, let done), .shutdown(let done):
                done()
            }
        }
    }

    /// Requests not yet taken by the monitor; nil once the monitor has ended.
    private let pending = Mutex<[Request]?>([])
    private let wake: EventFD
    private let epoll: Epoll
    private let devNull: Int32
    private let eventSink: AsyncStream<RunnerEvent>.Continuation
    private let pump: WorkerOutputPump
    private let groupRecord: ProcessGroupRecord?
    let killedLeftoverGroups: [Int32]
    /// Where events go instead of `eventSink`, once set (`deliverEvents`).
    let eventHandler = Mutex<EventHandler?>(nil)
    /// Jobs of the actor that runs on this thread.
    private let jobs = Mutex<[UnownedJob]>([])
    /// Someone runs on this executor: the thread then outlives the runner's shutdown.
    let servesJobs = Atomic<Bool>(false)
    /// The monitor thread's pthread_t, set when it starts.
    private let monitorThread = Atomic<UInt>(0)
    /// The monitor thread is running the caller's jobs or its event handler (read and written on
    /// that thread only).
    private var runningJobs = false

    private var workers: [UInt64: RunningWorker] = [:]
    /// Workers whose leader is reaped while others of their group still die, by id.
    private var draining: [UInt64: DrainingGroup] = [:]
    /// The worker id of each watched pidfd of a dying group member.
    private var drainingMembers: [Int32: UInt64] = [:]
    /// Running and draining workers (a name stays taken until all of its group is gone).
    private var idsByName: [String: UInt64] = [:]
    private var nextID: UInt64 = 1
    private var shutdownWaiters: [@Sendable () -> Void] = []

    // epoll tokens: the low two bits tell a worker's pidfd, its kill timer and the pidfd of a
    // dying member of its group apart.
    private static let wakeToken = UInt64.max
    private static func exitToken(_ id: UInt64) -> UInt64 { id << 2 }
    private static func timerToken(_ id: UInt64) -> UInt64 { id << 2 | 1 }
    private static func memberToken(_ pidfd: Int32) -> UInt64 { UInt64(UInt32(bitPattern: pidfd)) << 2 | 2 }

    init(
        groupRecord: ProcessGroupRecord?, output: WorkerOutputDestination, logs: WorkerLogBuffers?,
        events: AsyncStream<RunnerEvent>.Continuation
    ) throws(SystemCallError) {
        self.groupRecord = groupRecord
        killedLeftoverGroups = groupRecord?.killedLeftovers ?? []
        devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        guard devNull >= 0 else { throw SystemCallError(call: "open /dev/null", errno: errno) }
        eventSink = events
        wake = try EventFD()
        epoll = try Epoll()
        try epoll.add(wake.fd, token: Self.wakeToken)
        pump = try WorkerOutputPump(destination: output, logs: logs)
        // The supervisor's synchronous work (a reload parses the configuration) may run here too.
        try startDedicatedThread(name: "bgw-monitor", stackSize: 2 << 20) { [self] in run() }
    }

    /// Queues a request for the monitor thread; requests are carried out in the order queued.
    /// A request made by a job running on the monitor thread (the supervisor, when it runs here)
    /// is carried out at once, after those queued before it: the spawn of a restart then does not
    /// wait for the rest of the supervisor's step (its log lines, signals and state file).
    func submit(_ request: Request) {
        if onMonitorThread && runningJobs {
            guard pending.withLock({ $0 != nil }) else { return request.refuse() }
            handleRequests()
            handle(request)
            return
        }
        let queued = pending.withLock { queue -> Bool in
            guard queue != nil else { return false }
            queue!.append(request)
            return true
        }
        if queued { wake.signal() } else { request.refuse() }
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        jobs.withLock { $0.append(job) }
        wake.signal()
    }

    /// The monitor thread is this executor's only thread: code there is isolated to it (the
    /// event handler is called there between jobs, see `WorkerRunner.deliverEvents`).
    func checkIsolated() {
        precondition(onMonitorThread, "not on the process runner's monitor thread")
    }

    func isIsolatingCurrentContext() -> Bool? { onMonitorThread }

    private var onMonitorThread: Bool {
        pthread_equal(pthread_self(), monitorThread.load(ordering: .relaxed)) != 0
    }

    // MARK: the monitor thread

    private func run() {
        monitorThread.store(pthread_self(), ordering: .relaxed)
        var ready = [epoll_event](repeating: epoll_event(), count: 64)
        var runnerEnded = false
        while true {
            for event in epoll.wait(into: &ready) {
                let token = event.data.u64
                if token == Self.wakeToken {
                    wake.drain()
                    if !runnerEnded { handleRequests() }
                } else {
                    switch token & 3 {
                    case 0: reap(id: token >> 2)
                    case 1: stopTimeoutExpired(id: token >> 2)
                    default: memberExited(pidfd: Int32(bitPattern: UInt32(truncatingIfNeeded: token >> 2)))
                    }
                }
            }
            // The caller's jobs, after the round's events (a start or stop they submit is carried
            // out at once, see `submit`).
            runJobs()
            if !runnerEnded && !shutdownWaiters.isEmpty && workers.isEmpty && draining.isEmpty {
                endRunner()
                runnerEnded = true
                // A caller on this executor still needs it (it resumes from the shutdown here).
                if !servesJobs.load(ordering: .relaxed) { break }
            }
        }
    }

    private func runJobs() {
        while true {
            let batch = jobs.withLock { queue -> [UnownedJob] in defer { queue = [] }; return queue }
            if batch.isEmpty { return }
            let me = asUnownedSerialExecutor()
            runningJobs = true
            for job in batch { job.runSynchronously(on: me) }
            runningJobs = false
        }
    }

    private func endRunner() {
        // Requests that raced with the end are refused; later ones are refused by `submit`.
        let late = pending.withLock { queue -> [Request] in defer { queue = nil }; return queue ?? [] }
        late.forEach { $0.refuse() }
        groupRecord?.finish()
        close(devNull)
        eventSink.finish()
        let waiters = shutdownWaiters
        pump.finish { waiters.forEach { $0() } }
    }

    private func handleRequests() {
        let requests = pending.withLock { queue -> [Request] in
            guard queue != nil else { return [] }
            defer { queue = [] }
            return queue!
        }
        requests.forEach(handle)
    }

    private func handle(_ request: Request) {
        switch request {
        case let .start(launch, answer):
            answer(spawn(launch))
        case let .stop(name, done):
            if let id = idsByName[name] { stop(id: id) }
            done()
        case .shutdown(let done):
            shutdownWaiters.append(done)
            for id in workers.keys { stop(id: id) }
        }
    }

    private func spawn(_ launch: PreparedLaunch) -> Result<Int32, RunnerError> {
        let name = launch.spec.name
        func failure(_ code: RunnerError.Code, _ context: String, _ errno: Int32? = nil) -> Result<Int32, RunnerError> {
            .failure(RunnerError(code, worker: name, context: context, errno: errno))
        }
        guard shutdownWaiters.isEmpty else { return failure(.shutDown, "the runner is shutting down") }
        guard idsByName[name] == nil else { return failure(.alreadyRunning, "it runs already") }

        // The child records its group in this slot before it can run anything of its own.
        var slot: Int?
        if let groupRecord {
            do {
                slot = try groupRecord.claimSlot()
            } catch {
                return failure(.spawnFailed, "recording its process group: \(error.call)", error.errno)
            }
        }
        func releaseSlot() { if let slot { groupRecord?.clear(slot) } }
        var stdoutPipe: [Int32] = [-1, -1]
        var stderrPipe: [Int32] = [-1, -1]
        guard _bgw_pipe_cloexec(&stdoutPipe) == 0 else {
            let code = errno
            releaseSlot()
            return failure(.spawnFailed, "pipe2", code)
        }
        guard _bgw_pipe_cloexec(&stderrPipe) == 0 else {
            let code = errno
            close(stdoutPipe[0]); close(stdoutPipe[1])
            releaseSlot()
            return failure(.spawnFailed, "pipe2", code)
        }
        var result = _bgw_spawn_result()
        let rc = launch.withRequest(stdin: devNull, stdout: stdoutPipe[1], stderr: stderrPipe[1]) { request in
            if let slot, let groupRecord {
                request.record_fd = groupRecord.descriptor
                request.record_offset = groupRecord.offset(of: slot)
                request.record_generation = groupRecord.generation
            }
            return _bgw_spawn(&request, &result)
        }
        close(stdoutPipe[1])
        close(stderrPipe[1])
        guard rc == 0 else {
            close(stdoutPipe[0])
            close(stderrPipe[0])
            // The child may have written the slot before a later step failed; it has been reaped.
            releaseSlot()
            var context = launch.describe(step: result.failed_step)
            if result.failed_step == _BGW_SPAWN_RECORD, let groupRecord { context += " \(groupRecord.path)" }
            return failure(.spawnFailed, context, result.error)
        }

        let id = nextID
        nextID += 1
        do {
            try epoll.add(result.pidfd, token: Self.exitToken(id))
        } catch {
            // Cannot watch it, so it must not run.
            _ = kill(-result.pid, SIGKILL)
            var code: Int32 = 0, status: Int32 = 0
            _ = _bgw_waitid_pidfd(result.pidfd, 0, &code, &status)
            close(result.pidfd)
            releaseSlot()
            close(stdoutPipe[0])
            close(stderrPipe[0])
            return failure(.spawnFailed, error.call, error.errno)
        }
        for (fd, priority) in [(stdoutPipe[0], SyslogPriority.info), (stderrPipe[0], SyslogPriority.error)] {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            pump.watch(fd: fd, worker: name, pid: result.pid, priority: priority)
        }
        workers[id] = RunningWorker(
            name: name, pid: result.pid, pidfd: result.pidfd, slot: slot, stopTimeout: launch.spec.stopTimeout)
        idsByName[name] = id
        return .success(result.pid)
    }

    /// SIGTERM (and SIGCONT, so that a stopped process sees it) to the worker's group, and a
    /// timer for SIGKILL.
    private func stop(id: UInt64) {
        guard var worker = workers[id], !worker.stopping else { return }
        worker.stopping = true
        signalGroup(worker, SIGTERM)
        signalGroup(worker, SIGCONT)
        if worker.stopTimeout <= .zero {
            signalGroup(worker, SIGKILL)
        } else if let timer = try? makeOneShotTimer(after: worker.stopTimeout) {
            if (try? epoll.add(timer, token: Self.timerToken(id))) != nil {
                worker.killTimer = timer
            } else {
                close(timer)
                signalGroup(worker, SIGKILL)
            }
        } else {
            signalGroup(worker, SIGKILL)
        }
        workers[id] = worker
    }

    private func stopTimeoutExpired(id: UInt64) {
        guard var worker = workers[id], let timer = worker.killTimer else { return }
        signalGroup(worker, SIGKILL)
        epoll.remove(timer)
        close(timer)
        worker.killTimer = nil
        workers[id] = worker
    }

    /// The leader's pid is its group's id. It is safe to use until the leader is reaped: the
    /// kernel does not reuse the pid of an unreaped process, nor a group id in use. A leader
    /// that moved to another group still gets the signal through its pidfd.
    private func signalGroup(_ worker: RunningWorker, _ signal: Int32) {
        if kill(-worker.pid, signal) < 0 {
            _ = _bgw_pidfd_send_signal(worker.pidfd, signal)
        }
    }

    /// The worker's main process exited: kill what is left of its group (before reaping, while
    /// the group id cannot be reused), reap it through its pidfd, report the exit.
    private func reap(id: UInt64) {
        guard let worker = workers.removeValue(forKey: id) else { return }
        _ = kill(-worker.pid, SIGKILL)
        var code: Int32 = 0
        var status: Int32 = 0
        let rc = _bgw_waitid_pidfd(worker.pidfd, 0, &code, &status)
        epoll.remove(worker.pidfd)
        close(worker.pidfd)
        if let timer = worker.killTimer {
            epoll.remove(timer)
            close(timer)
        }
        // waitid cannot fail for our own unreaped child; if it did, the process is gone anyway.
        let exit = rc == 0 ? WorkerExit(siginfoCode: code, status: status) : .killed(SIGKILL)
        let group = DrainingGroup(
            name: worker.name, slot: worker.slot,
            event: .exited(name: worker.name, pid: worker.pid, status: exit), members: [])
        // Others of the group got SIGKILL above but may not have died yet: until they have, a
        // restart would run beside them (the chaos test saw the new copy find the old one's lock).
        let members = dyingMembers(ofGroup: worker.pid)
        guard !members.isEmpty else { return finish(group) }
        draining[id] = DrainingGroup(name: group.name, slot: group.slot, event: group.event, members: members)
        for pidfd in members {
            drainingMembers[pidfd] = id
            if (try? epoll.add(pidfd, token: Self.memberToken(pidfd))) == nil {
                // Cannot watch it: it has SIGKILL pending, so do not wait for ever.
                memberExited(pidfd: pidfd)
            }
        }
    }

    /// Live processes of a group whose leader is reaped, as pidfds. Only a group that still has
    /// members is looked for in /proc, so a worker that leaves nothing behind costs no scan.
    private func dyingMembers(ofGroup pgid: Int32) -> Set<Int32> {
        guard kill(-pgid, 0) == 0 else { return [] }
        var pidfds: Set<Int32> = []
        for process in ProcStat.all() where process.pgrp == pgid && process.state != "Z" && process.state != "X" {
            let pidfd = _bgw_pidfd_open(process.pid, 0)
            guard pidfd >= 0 else { continue }  // gone meanwhile
            // The pid may have been reused between the scan and the open; a group that only
            // dies gains no member, so a process still in it is the one scanned.
            guard ProcStat.read(pid: process.pid)?.pgrp == pgid else {
                close(pidfd)
                continue
            }
            pidfds.insert(pidfd)
        }
        return pidfds
    }

    private func memberExited(pidfd: Int32) {
        guard let id = drainingMembers.removeValue(forKey: pidfd) else { return }
        epoll.remove(pidfd)
        close(pidfd)
        guard var group = draining[id] else { return }
        group.members.remove(pidfd)
        if group.members.isEmpty {
            draining[id] = nil
            finish(group)
        } else {
            draining[id] = group
        }
    }

    /// The whole group is gone: free the name and the record's slot, report the exit.
    private func finish(_ group: DrainingGroup) {
        idsByName[group.name] = nil
        // Before the report: whoever learns of the exit finds the record without this worker.
        if let slot = group.slot { groupRecord?.clear(slot) }
        let event = group.event
        if let handler = eventHandler.withLock({ $0 }) {
            // The caller's code, run here as one of its jobs would be (this is the last step of
            // the reap, so the monitor's state is whole): a start it submits is spawned at once.
            runningJobs = true
            handler.deliver(event)
            runningJobs = false
        } else {
            eventSink.yield(event)
        }
    }
}
