// The embedded runner: each worker is a child process of the daemon in its own process group.
//
// Everything happens on the daemon's event loop (Loop/EventLoop.swift), the thread the
// supervisor runs on: PR_SET_PDEATHSIG fires when the *thread* that spawned a process exits, so
// spawning happens on that thread, which lives as long as the daemon (never on the cooperative
// pool or a Dispatch worker, which may retire). A stopping worker has a loop timer for SIGKILL
// after its stop timeout. A second thread reads the workers' output (WorkerOutputPump).
// bgworkerd's runner (`adoptOrphans`) is a child subreaper that owns SIGCHLD: every exit, of a
// worker or of an orphan it adopted (a worker's process that left its session with setsid, killed
// with its worker), comes from SIGCHLD read on a signalfd (no handler), and the daemon holds one
// fd per worker, its output pipe. A runner inside another program (tests) must not reap others'
// children: it watches each worker's pidfd instead and reaps only that pid.
import BgWorkerCore
import CShims
import Glibc
import Synchronization

public final class ProcessRunner: WorkerRunner {
    public let kind = "process"
    public let loop: EventLoop
    /// Every worker's last output lines; the pump writes them.
    public let logs: WorkerLogBuffers? = WorkerLogBuffers()
    private let monitor: ProcessMonitor

    /// Opens the runner's record and starts its output thread.
    /// - Parameters:
    ///   - loop: the loop it works on (the daemon's); nil: `EventLoop.shared`.
    ///   - processGroupFile: the runtime file where live workers' process groups are written
    ///     (e.g. `/run/bgworker/process-groups`), locked by this runner until it is shut down.
    ///     Groups recorded there by a previous daemon that still exist are killed now, before
    ///     anything starts. A file locked by a live runner is refused (`.runtimeDirectoryInUse`).
    ///     nil: no record (tests).
    ///   - output: where workers' stdout and stderr lines go.
    ///   - notifySocket: where the notify socket of workers with `ready = notify` or a watchdog
    ///     is made (e.g. `/run/bgworker/notify`), at the first such start. nil: such workers
    ///     cannot start (tests that run none).
    ///   - adoptOrphans: make the process a child subreaper, so that a worker's process that left
    ///     its session (setsid: a daemonizer) is reparented to it when orphaned, and killed with its
    ///     worker (docs/process-runner.md "Processes that leave the session"). SIGCHLD must be
    ///     blocked in every thread of the process (it is read from a signalfd; refused otherwise),
    ///     and nothing else in the process may reap children. The daemon's runner does; tests
    ///     running a runner inside the test process do not.
    public init(
        loop: EventLoop? = nil, processGroupFile: String? = nil, output: WorkerOutputDestination = .automatic,
        notifySocket: String? = nil, adoptOrphans: Bool = false
    ) throws(RunnerError) {
        let loop = loop ?? .shared
        self.loop = loop
        // Children reaped by the kernel leave no exit status, and their pids free while their
        // groups are still signalled. The daemon owns SIGCHLD and takes it back; a host program
        // that asked for this is refused rather than changed under it.
        switch _bgw_sigchld_autoreaps(adoptOrphans ? 1 : 0) {
        case 0: break
        case 1 where adoptOrphans: break
        case 1: throw RunnerError(.unavailable, worker: nil, context: "SIGCHLD is ignored (or SA_NOCLDWAIT set): children would be reaped before their exit could be read")
        default: throw RunnerError(.unavailable, worker: nil, context: "sigaction(SIGCHLD)", errno: errno)
        }
        if adoptOrphans {
            var mask = sigset_t()
            pthread_sigmask(SIG_BLOCK, nil, &mask)
            guard sigismember(&mask, SIGCHLD) == 1 else {
                throw RunnerError(.unavailable, worker: nil, context: "adopting orphans needs SIGCHLD blocked in every thread")
            }
            guard _bgw_set_child_subreaper() == 0 else {
                throw RunnerError(.unavailable, worker: nil, context: "prctl(PR_SET_CHILD_SUBREAPER)", errno: errno)
            }
        }
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
        do {
            monitor = try ProcessMonitor(
                loop: loop, groupRecord: record, output: output, logs: logs, notifyPath: notifySocket, adoptsOrphans: adoptOrphans)
        } catch {
            throw RunnerError(.unavailable, worker: nil, context: error.description)
        }
    }

    /// The process groups a previous daemon left that this runner killed when it started.
    public var killedLeftoverGroups: [Int32] { monitor.killedLeftoverGroups }

    public func setEventHandler(_ handler: @escaping @Sendable (RunnerEvent) -> Void, ended: @escaping @Sendable () -> Void) {
        monitor.events.setHandler(handler, ended: ended)
    }

    public func submitStart(_ spec: LaunchSpec, answer: @escaping @Sendable (Result<Int32, RunnerError>) -> Void) {
        let launch: PreparedLaunch
        do {
            launch = try PreparedLaunch(monitor.withNotifyEnvironment(spec))
        } catch {
            // Never nested in the caller (see `WorkerRunner`).
            return loop.execute { answer(.failure(error)) }
        }
        monitor.submit(.start(launch, answer))
    }

    public func submitStop(name: String, done: @escaping @Sendable () -> Void) {
        monitor.submit(.stop(name, done))
    }

    public func adopt(_ specs: [LaunchSpec]) async -> [String: Int32] { [:] }

    public func shutdown() async {
        await withCheckedContinuation { continuation in
            monitor.submit(.shutdown({ continuation.resume() }))
        }
    }
}

/// The soft RLIMIT_NOFILE a worker starts with: the daemon raises its own (`raiseSoftNofileLimit`),
/// a program expects the conventional one (select() cannot go above 1024).
let workerSoftNofile = 1024

/// A worker the runner runs. Its pid is also its process group id; it is our unreaped child until
/// `reap`, so the pid names it alone until then (the kernel does not reuse it).
private struct RunningWorker {
    var name: String
    var pid: Int32
    /// Its pidfd and the loop's watch of it, when exits do not come from SIGCHLD (no `adoptOrphans`).
    var exitWatch: (pidfd: Int32, registration: LoopRegistration)?
    /// With `adoptOrphans`: its pidfd, watched once its group got SIGKILL to end a stop
    /// (`killGroup`): a death that a tracer hides from waitid, and so from SIGCHLD.
    var deathWatch: (pidfd: Int32, registration: LoopRegistration)?
    /// Its slot in the record of process groups.
    var slot: Int?
    var stopTimeout: Duration
    /// The loop timer that sends SIGKILL, while stopping.
    var killTimer: LoopTimer?
    /// SIGTERM (or the watchdog's SIGABRT) has been sent.
    var stopping = false
    /// Its side of the notify protocol; nil for a worker that does not speak it.
    var readiness: WorkerReadiness?
    /// The loop timer for `readiness.deadline`, and when it fires (it may fire early: the
    /// deadline only moves later on a keep-alive, and is checked again then).
    var readinessTimer: LoopTimer?
    var readinessTimerAt: UInt64 = 0
    /// What its exit is reported as when the runner killed it for the notify protocol.
    var exitOverride: WorkerExit?
    /// The last few pids whose messages counted for it (`ProcessMonitor.senderGroups`).
    var recentSenders: [Int32] = []
}

/// A worker whose main process is reaped, until every other process of its group is gone too.
private struct DrainingGroup {
    var name: String
    var slot: Int?
    var event: RunnerEvent
    /// pidfds of the group's processes that have not exited yet.
    var members: Set<Int32>
}

/// The runner's state and operations, on the loop thread.
private final class ProcessMonitor: @unchecked Sendable {
    // Safety of @unchecked Sendable: `loop`, `devNull`, `events`, `pump`, `killedLeftoverGroups`
    // are immutable after init (and Sendable or only used through thread-safe calls). Every
    // `var` below, and `groupRecord` (a class not made for sharing), is touched only on the loop
    // thread: `submit` hands requests from other threads over as loop jobs, and every other
    // method is called from the loop (a job, a pidfd handler, a timer).

    enum Request: Sendable {
        case start(PreparedLaunch, @Sendable (Result<Int32, RunnerError>) -> Void)
        case stop(String, @Sendable () -> Void)
        case shutdown(@Sendable () -> Void)

        /// Answers a request that came after the runner ended.
        func refuse() {
            switch self {
            case .start(let launch, let answer):
                answer(.failure(RunnerError(.shutDown, worker: launch.spec.name, context: "the runner is shut down")))
            case .stop(_, let done), .shutdown(let done):
                done()
            }
        }
    }

    let loop: EventLoop
    private let devNull: Int32
    let events: RunnerEventSink
    private let pump: WorkerOutputPump
    private let groupRecord: ProcessGroupRecord?
    let killedLeftoverGroups: [Int32]

    private var workers: [UInt64: RunningWorker] = [:]
    /// Workers whose leader is reaped while others of their session still die (or are not looked
    /// for yet: `sessionsToScan`), by id.
    private var draining: [UInt64: DrainingGroup] = [:]
    /// The worker id, pid and loop registration of each watched pidfd of a dying member.
    private var drainingMembers: [Int32: (id: UInt64, pid: Int32, registration: LoopRegistration?)] = [:]
    /// The pids in `drainingMembers`.
    private var drainingPids: Set<Int32> = []
    /// Sessions of reaped workers (their pid) whose members are looked for at the next scan,
    /// with the worker's id in `draining`; one scan serves every exit of a loop iteration.
    private var sessionsToScan: [Int32: UInt64] = [:]
    /// Draining workers whose members all died after their scan: their orphans (the dead members'
    /// children that had left the session, now ours) are looked for again before the exit is reported.
    private var orphansToRecheck: Set<UInt64> = []
    /// A `scanSessions` job is queued.
    private var scanQueued = false
    /// Scans in a row that found a child of ours in the middle of an execve, and the timer of
    /// the next one (`scanSessions`).
    private var unsettledRescans = 0
    private var unsettledTimer: LoopTimer?
    /// The runner is a child subreaper and reaps orphans (`ProcessRunner.init(adoptOrphans:)`).
    private let adoptsOrphans: Bool
    /// The threads that have spawned workers (the loop thread): with the main thread, which
    /// adopts every orphan, the only threads of ours that have children (`listedChildren`).
    private var spawningThreads: [pid_t] = []
    /// The signalfd of SIGCHLD and its registration, made at the first spawn.
    private var childSignalFD: Int32 = -1
    private var childSignalRegistration: LoopRegistration?
    /// The worker named by each of our children that is no worker's main process ("" for none):
    /// its BGWORKER_NAME when first seen. A child's pid is not reused before we reap it, and the
    /// entry goes when we do.
    private var orphanOwners: [Int32: String] = [:]
    /// Running and draining workers (a name stays taken until all of its group is gone).
    private var idsByName: [String: UInt64] = [:]
    private var nextID: UInt64 = 1
    /// Running workers by their pid, which is their process group's id (notify senders).
    private var idsByGroup: [Int32: UInt64] = [:]
    /// The group of each recent sender whose message counted: a sender that exits right after
    /// a burst (its queued datagrams are read after its exit) is still placed. Used only when
    /// the pid no longer exists (a live pid is always looked up anew); a worker's entries go with
    /// it, at most `recentSendersKept` each.
    private var senderGroups: [Int32: Int32] = [:]
    private static let recentSendersKept = 32
    /// Datagrams read before a readiness deadline is judged: a full queue (512 under systemd) and more.
    private static let drainBeforeJudging = 1024
    /// The notify socket's path; made at the first start of a worker that speaks the protocol.
    private let notifyPath: String?
    private var notifyReceiver: NotifyReceiver?
    private var notifyRegistration: LoopRegistration?
    /// Refused notify datagrams: the first of a second is reported at once, the rest counted
    /// and reported when the second is over (a flood costs one event a second).
    private var refusalsSuppressed = 0
    private var refusalTimer: LoopTimer?
    private var shutdownWaiters: [@Sendable () -> Void] = []
    private var ended = false

    init(
        loop: EventLoop, groupRecord: ProcessGroupRecord?, output: WorkerOutputDestination, logs: WorkerLogBuffers?,
        notifyPath: String?, adoptsOrphans: Bool
    ) throws(SystemCallError) {
        self.loop = loop
        self.adoptsOrphans = adoptsOrphans
        self.notifyPath = notifyPath
        self.groupRecord = groupRecord
        killedLeftoverGroups = groupRecord?.killedLeftovers ?? []
        devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        guard devNull >= 0 else { throw SystemCallError(call: "open /dev/null", errno: errno) }
        events = RunnerEventSink(loop: loop)
        pump = try WorkerOutputPump(destination: output, logs: logs)
    }

    /// Carries out a request on the loop thread, in the order submitted. From the loop thread it
    /// is carried out at once (the supervisor's restart spawns with no queue in between); its
    /// answer is a loop job of its own, so the caller is never re-entered.
    func submit(_ request: Request) {
        if loop.isOnLoopThread {
            handle(request)
        } else {
            loop.execute { [self] in handle(request) }
        }
    }

    private func answer(_ body: @escaping @Sendable () -> Void) {
        loop.execute(body)
    }

    private func endRunnerIfDone() {
        guard !ended, !shutdownWaiters.isEmpty, workers.isEmpty, draining.isEmpty else { return }
        ended = true
        groupRecord?.finish()
        closeNotifySocket()
        if let childSignalRegistration { loop.unregister(childSignalRegistration) }
        childSignalRegistration = nil
        if childSignalFD >= 0 { close(childSignalFD) }
        childSignalFD = -1
        close(devNull)
        events.finish()
        let waiters = shutdownWaiters
        pump.finish { waiters.forEach { $0() } }
    }

    private func handle(_ request: Request) {
        switch request {
        case let .start(launch, reply):
            guard !ended else { return answer { request.refuse() } }
            let result = spawn(launch)
            answer { reply(result) }
        case let .stop(name, done):
            if let id = idsByName[name] { stop(id: id) }
            answer(done)
        case .shutdown(let done):
            guard !ended else { return answer(done) }
            shutdownWaiters.append(done)
            for id in workers.keys { stop(id: id) }
            endRunnerIfDone()
        }
    }

    private func spawn(_ launch: PreparedLaunch) -> Result<Int32, RunnerError> {
        let name = launch.spec.name
        func failure(_ code: RunnerError.Code, _ context: String, _ errno: Int32? = nil) -> Result<Int32, RunnerError> {
            .failure(RunnerError(code, worker: name, context: context, errno: errno))
        }
        guard shutdownWaiters.isEmpty else { return failure(.shutDown, "the runner is shutting down") }
        guard idsByName[name] == nil else { return failure(.alreadyRunning, "it runs already") }
        if adoptsOrphans, childSignalRegistration == nil {
            do {
                try watchChildren()
            } catch {
                return failure(.spawnFailed, "the signalfd of SIGCHLD: \(error.call)", error.errno)
            }
        }
        if launch.spec.usesNotify {
            do {
                try openNotifySocket()
            } catch {
                return failure(.spawnFailed, "the notify socket \(notifyPath ?? "(none)"): \(error.call)", error.errno)
            }
        }

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
        // One pipe for stdout and stderr: the one fd held per worker (two with a pidfd watch; issue 15).
        var outputPipe: [Int32] = [-1, -1]
        guard _bgw_pipe_cloexec(&outputPipe) == 0 else {
            let code = errno
            releaseSlot()
            return failure(code == EMFILE || code == ENFILE ? .outOfFileDescriptors : .spawnFailed,
                           "pipe2" + fileBudget(code), code)
        }
        let thread = _bgw_gettid()
        if !spawningThreads.contains(thread) { spawningThreads.append(thread) }
        var result = _bgw_spawn_result()
        let rc = launch.withRequest(stdin: devNull, stdout: outputPipe[1], stderr: outputPipe[1]) { request in
            request.nofile_soft = Int32(workerSoftNofile)
            if let slot, let groupRecord {
                request.record_fd = groupRecord.descriptor
                request.record_offset = groupRecord.offset(of: slot)
                request.record_generation = groupRecord.generation
            }
            return _bgw_spawn(&request, &result)
        }
        close(outputPipe[1])
        guard rc == 0 else {
            close(outputPipe[0])
            // The child may have written the slot before a later step failed; it has been reaped.
            releaseSlot()
            var context = launch.describe(step: result.failed_step)
            if result.failed_step == _BGW_SPAWN_RECORD, let groupRecord { context += " \(groupRecord.path)" }
            let outOfFiles = result.error == EMFILE || result.error == ENFILE
            return failure(outOfFiles ? .outOfFileDescriptors : .spawnFailed, context + fileBudget(result.error), result.error)
        }

        let id = nextID
        nextID += 1
        var exitWatch: (pidfd: Int32, registration: LoopRegistration)?
        if adoptsOrphans {
            // Its exit comes from SIGCHLD (`childExited`); the pidfd is not kept (issue 15's budget).
            close(result.pidfd)
        } else {
            do {
                exitWatch = (result.pidfd, try loop.register(fd: result.pidfd) { [self] _ in reap(id: id) })
            } catch {
                // Cannot watch it, so it must not run.
                _ = kill(-result.pid, SIGKILL)
                var code: Int32 = 0, status: Int32 = 0
                _ = _bgw_waitid_pidfd(result.pidfd, 0, &code, &status)
                close(result.pidfd)
                releaseSlot()
                close(outputPipe[0])
                let outOfFiles = error.errno == EMFILE || error.errno == ENFILE
                return failure(outOfFiles ? .outOfFileDescriptors : .spawnFailed, error.call + fileBudget(error.errno), error.errno)
            }
        }
        _ = fcntl(outputPipe[0], F_SETFL, fcntl(outputPipe[0], F_GETFL) | O_NONBLOCK)
        pump.watch(fd: outputPipe[0], worker: name, pid: result.pid, priority: SyslogPriority.info)
        var worker = RunningWorker(
            name: name, pid: result.pid, exitWatch: exitWatch, slot: slot, stopTimeout: launch.spec.stopTimeout)
        if launch.spec.usesNotify {
            let spec = launch.spec
            worker.readiness = WorkerReadiness(
                ready: spec.ready, startTimeout: spec.startTimeout, watchdog: spec.watchdog,
                stopTimeout: Double(nanoseconds(spec.stopTimeout)) / 1e9, now: monotonicNow())
        }
        workers[id] = worker
        idsByName[name] = id
        idsByGroup[result.pid] = id
        armReadinessTimer(id: id)
        return .success(result.pid)
    }

    /// What to tell an operator when the daemon is out of fds: its limit, what its workers hold,
    /// what to raise. (Counting /proc/self/fd would need one more fd.)
    private func fileBudget(_ code: Int32?) -> String {
        guard code == EMFILE || code == ENFILE else { return "" }
        let limit = FileLimit.current
        let whose = code == EMFILE ? "bgworkerd's RLIMIT_NOFILE (LimitNOFILE= in bgworkerd.service)" : "the system's fs.file-max"
        return ": out of file descriptors: \(workers.count) running workers hold \(adoptsOrphans ? 1 : 2) each, soft limit \(limit.soft) "
            + "(hard \(limit.hard)); raise \(whose) or run fewer workers. Not retried: the worker is failed "
            + "until Restart or Enable"
    }

    /// SIGTERM (and SIGCONT, so that a stopped process sees it) to the worker's group, and a
    /// timer for SIGKILL.
    private func stop(id: UInt64) {
        guard var worker = workers[id], !worker.stopping else { return }
        worker.stopping = true
        // Asked to stop: no deadline of the notify protocol applies any more.
        worker.readiness?.stop()
        signalGroup(worker, SIGTERM)
        signalGroup(worker, SIGCONT)
        workers[id] = worker
        armKill(id: id)
    }

    /// The second step of a stop, once the first signal is sent: SIGKILL to the group when the
    /// worker's stop timeout ends (a loop timer), or now when it has none.
    private func armKill(id: UInt64) {
        guard let stopTimeout = workers[id]?.stopTimeout else { return }
        guard stopTimeout > .zero else { return killGroup(id: id) }
        workers[id]?.killTimer = loop.schedule(after: stopTimeout) { [self] in stopTimeoutExpired(id: id) }
    }

    private func stopTimeoutExpired(id: UInt64) {
        guard workers[id]?.killTimer != nil else { return }
        workers[id]?.killTimer = nil
        killGroup(id: id)
    }

    /// SIGKILL to a stopping worker's group, and from then on its main process's pidfd watched.
    /// A main process traced by another process (`strace -p`, a debugger) dies into a zombie that
    /// only its tracer can wait for: SIGCHLD and waitid tell us of it once the tracer waits or
    /// detaches, which a suspended tracer never does, and the stop (the daemon's SIGTERM too) would
    /// wait for it for ever. Its pidfd is readable at the death itself (`mainDied`). One fd more,
    /// only for a worker being killed.
    private func killGroup(id: UInt64) {
        guard let worker = workers[id] else { return }
        signalGroup(worker, SIGKILL)
        guard adoptsOrphans, worker.deathWatch == nil else { return }
        // Our unreaped child: the pid names it alone.
        let pidfd = _bgw_pidfd_open(worker.pid, 0)
        // Cannot (out of fds): its exit still comes from SIGCHLD, once no tracer hides it.
        guard pidfd >= 0 else { return }
        guard let registration = try? loop.register(fd: pidfd, { [self] _ in mainDied(id: id) }) else {
            close(pidfd)
            return
        }
        workers[id]?.deathWatch = (pidfd, registration)
    }

    /// The killed worker's main process is dead (its pidfd is readable; the SIGCHLD of the same
    /// death may not have been read yet). Reaped when it can be; when a tracer hides it, its exit
    /// is reported without its status and the zombie is reaped by pid when SIGCHLD names it
    /// (`childExited`: no worker's main any more). Its session is emptied and waited for as after
    /// any exit, so nothing of the worker runs when it restarts.
    private func mainDied(id: UInt64) {
        reap(id: id, waitFlags: WNOHANG)
    }

    /// The leader's pid is its group's id. It is safe to use until the leader is reaped: the
    /// kernel does not reuse the pid of an unreaped process, nor a group id in use. A leader
    /// that moved to another group still gets the signal by its pid (our unreaped child).
    private func signalGroup(_ worker: RunningWorker, _ signal: Int32) {
        if kill(-worker.pid, signal) < 0 {
            _ = kill(worker.pid, signal)
        }
    }

    /// The worker's main process exited: kill what is left of its group (before reaping, while
    /// the group id cannot be reused), reap exactly that pid, report the exit. Called when the
    /// exit is known (SIGCHLD's waitid saw it, or its pidfd is readable), so the wait is immediate.
    private func reap(id: UInt64, waitFlags: Int32 = 0) {
        guard let worker = workers.removeValue(forKey: id) else { return }
        idsByGroup[worker.pid] = nil
        for sender in worker.recentSenders where senderGroups[sender] == worker.pid { senderGroups[sender] = nil }
        _ = kill(-worker.pid, SIGKILL)
        var code: Int32 = 0
        var status: Int32 = 0
        let rc = _bgw_waitid_pid(worker.pid, waitFlags, &code, &status)
        for watch in [worker.exitWatch, worker.deathWatch].compactMap({ $0 }) {
            loop.unregister(watch.registration)
            close(watch.pidfd)
        }
        if let timer = worker.killTimer { loop.cancel(timer) }
        if let timer = worker.readinessTimer { loop.cancel(timer) }
        // waitid cannot fail for our own unreaped child; if it did, the process is gone anyway.
        // Nothing to wait for (code 0, `mainDied`): a tracer hides the zombie; it died of our SIGKILL.
        let exit = worker.exitOverride ?? (rc == 0 && code != 0 ? WorkerExit(siginfoCode: code, status: status) : .killed(SIGKILL))
        let group = DrainingGroup(
            name: worker.name, slot: worker.slot,
            event: .exited(name: worker.name, pid: worker.pid, status: exit), members: [])
        // Others of the worker's session got SIGKILL above (its group) or get it at the scan (a
        // member that moved to a group of its own: job control), but may not have died yet:
        // until they have, a restart would run beside them (the chaos test saw the new copy find
        // the old one's lock; scripts/adversarial/escape_group.py, a job of `bash -m`).
        draining[id] = group
        sessionsToScan[worker.pid] = id
        queueScan()
    }

    private func queueScan() {
        guard !scanQueued else { return }
        scanQueued = true
        loop.execute { [self] in scanSessions() }
    }

    /// Kills what is left in the sessions of the workers reaped since the last scan, and waits
    /// for it: each exit is reported once its session is empty. The session is the worker's own
    /// (setsid at spawn), and no process can join another session, so what is in it is the
    /// worker's. One pass over /proc with getsid per process (~0.45 µs each here), again until a
    /// pass finds no one new: a member not killed yet can fork meanwhile; a killed one cannot.
    ///
    /// With `adoptsOrphans`, each pass also kills the worker's orphans: those of our children that
    /// are no worker's main process and whose environment names the worker (BGWORKER_NAME). A
    /// process that called setsid (a daemonizer) is reparented to us once its parent dies; its
    /// own session, which holds its descendants, is scanned with the worker's from then on. One
    /// whose parent still lives becomes ours when that parent dies: the members' deaths are waited
    /// for, and then the orphans are looked for again (`orphansToRecheck`) before the report.
    private func scanSessions() {
        scanQueued = false
        var pending = sessionsToScan
        sessionsToScan = [:]
        let rechecks = orphansToRecheck
        orphansToRecheck = []
        guard !pending.isEmpty || !rechecks.isEmpty else { return }
        let ids = Set(pending.values).union(rechecks)
        if adoptsOrphans, let children = listedChildren(), children.allSatisfy({ idsByGroup[$0] != nil }) {
            // We are a subreaper, so every live process of a reaped worker's session descends from
            // a child of ours that is no running worker's main (docs/process-runner.md "Exits"):
            // with none, nothing of those sessions lives, and the pass over /proc is skipped.
            return finishDrained(ids)
        }
        var seen = Set<Int32>()
        var unsettled = false
        for _ in 0..<Self.sessionScanRounds {
            var newcomers = false
            if !pending.isEmpty {
                for (pid, session) in Self.sessionMembers(pending.keys.sorted()) where seen.insert(pid).inserted {
                    guard let id = pending[session], draining[id] != nil else { continue }
                    newcomers = true
                    // The pid may have been reused between the scan and the open: a session that
                    // only dies gains no member, so a process still in it is the one scanned (a
                    // session of an orphan that is not killed yet may gain members: its own).
                    killMember(pid, of: id) { getsid(pid) == session }
                }
            }
            if adoptsOrphans {
                let (found, anyUnsettled) = orphans(of: ids)
                unsettled = anyUnsettled
                for (pid, id) in found where seen.insert(pid).inserted {
                    newcomers = true
                    // Our child: its pid is not reused before we reap it, on this thread.
                    killMember(pid, of: id) { true }
                    let session = getsid(pid)
                    if session == pid, pending[session] == nil { pending[session] = id }
                }
            }
            if !newcomers { break }
        }
        if unsettled, unsettledRescans < Self.unsettledRescanLimit {
            // A child of ours in the middle of an execve may be an orphan of these workers (its
            // environment names its worker once the execve is done): their exits wait, and the
            // scan runs again shortly (a transient state: bounded, no timer while nothing waits).
            unsettledRescans += 1
            for (session, id) in pending where draining[id] != nil { sessionsToScan[session] = id }
            orphansToRecheck.formUnion(ids)
            if unsettledTimer == nil {
                unsettledTimer = loop.schedule(after: Self.unsettledRescanDelay) { [self] in
                    unsettledTimer = nil
                    queueScan()
                }
            }
            return
        }
        unsettledRescans = 0
        finishDrained(ids)
    }

    /// The scan looks again while a child of ours is in an execve: every 1 ms, at most 200 times
    /// in a row. Then the exits are reported anyway (an execve blocked that long, on a hung
    /// file system, is a known gap: docs/process-runner.md).
    private static let unsettledRescanDelay = Duration.milliseconds(1)
    private static let unsettledRescanLimit = 200

    /// Reports the exits of those of `ids` with no member left to wait for.
    private func finishDrained(_ ids: Set<UInt64>) {
        for id in ids {
            if let group = draining[id], group.members.isEmpty {
                draining[id] = nil
                finish(group)
            }
        }
    }

    /// SIGKILL to `pid` through a pidfd (when `stillOurs` holds once it is open), and its exit
    /// waited for as a member of draining worker `id`.
    private func killMember(_ pid: Int32, of id: UInt64, stillOurs: () -> Bool) {
        guard !drainingPids.contains(pid) else { return }
        let pidfd = _bgw_pidfd_open(pid, 0)
        guard pidfd >= 0 else { return }  // gone meanwhile
        guard stillOurs() else {
            close(pidfd)
            return
        }
        _ = _bgw_pidfd_send_signal(pidfd, SIGKILL)
        guard let registration = try? loop.register(fd: pidfd, { [self] _ in memberExited(pidfd: pidfd) }) else {
            // Cannot watch it: it has SIGKILL pending, so do not wait for ever.
            close(pidfd)
            return
        }
        draining[id]?.members.insert(pidfd)
        drainingMembers[pidfd] = (id, pid, registration)
        drainingPids.insert(pid)
    }

    /// Our children whose environment names one of the draining workers `ids`, with its id.
    /// Workers' main processes and members being killed are skipped; each other child's
    /// environment is read once (`orphanOwners`).
    /// `unsettled`: a child is in the middle of an execve (neither its environment nor its argv
    /// can be read yet), so it may be one of them.
    private func orphans(of ids: Set<UInt64>) -> (found: [(pid: Int32, id: UInt64)], unsettled: Bool) {
        var byName: [String: UInt64] = [:]
        for id in ids { if let group = draining[id] { byName[group.name] = id } }
        guard !byName.isEmpty else { return ([], false) }
        var found: [(Int32, UInt64)] = []
        var unsettled = false
        for pid in ownChildren() where idsByGroup[pid] == nil && !drainingPids.contains(pid) {
            let owner: String
            if let known = orphanOwners[pid] {
                owner = known
            } else {
                guard let read = Self.workerName(of: pid) else {
                    if _bgw_cmdline_empty(pid) == 1 { unsettled = true }
                    continue
                }
                owner = read
                orphanOwners[pid] = read
            }
            if let id = byName[owner] { found.append((pid, id)) }
        }
        return (found, unsettled)
    }

    /// This process's children ([] when they cannot be listed: no orphan is found).
    private func ownChildren() -> [Int32] { listedChildren() ?? [] }

    /// This process's children; nil when they cannot be listed. Only the main thread's and the
    /// spawning threads' lists are read: a worker's main process is the child of the thread that
    /// spawned it, and an orphan is adopted by the first live thread of the subreaper, the main
    /// thread, which never exits before the process. Another thread's child (none today) cannot
    /// be a member of a worker's session (docs/process-runner.md "Exits").
    private func listedChildren() -> [Int32]? {
        var threads = spawningThreads
        if !threads.contains(getpid()) { threads.append(getpid()) }
        var capacity = 256
        while true {
            var pids = [Int32](repeating: 0, count: capacity)
            // Safe: the shim reads `threads.count` tids and writes at most `capacity` pids, the array's length.
            let count = _bgw_threads_children(threads, threads.count, &pids, capacity)
            guard count >= 0 else { return nil }
            if count <= capacity { return Array(pids[0..<count]) }
            capacity = count + 256
        }
    }

    /// The BGWORKER_NAME of `pid`'s environment ("" when it has none), nil when it cannot be read
    /// or is empty: a process caught in the middle of an execve reads as empty, and a "" cached
    /// then would leave an orphan of the worker unattributed for good (two copies: the flock of
    /// scripts/adversarial/respawn_orphans.py, `dbl`, hundreds of collisions in 3 s), so it is
    /// read again at the next scan.
    private static func workerName(of pid: Int32) -> String? {
        var value = [UInt8](repeating: 0, count: 256)
        // Safe: the shim writes at most `value.count` bytes; only the first `length` are read back.
        let length = _bgw_environ_value(pid, "BGWORKER_NAME=", &value, value.count)
        if length == -2 || length == -3 { return nil }
        // Longer than any worker's name (at most 64 bytes, isValidWorkerName): no worker's.
        guard length >= 0, length <= value.count else { return "" }
        return String(decoding: value[0..<length], as: UTF8.self)
    }

    /// Bounds the passes of one scan (a fork bomb loses its forkers at each pass).
    private static let sessionScanRounds = 64

    /// The processes now in `sessions` (sorted), as (pid, session).
    private static func sessionMembers(_ sessions: [Int32]) -> [(pid: Int32, session: Int32)] {
        var capacity = 1024
        while true {
            var pids = [Int32](repeating: 0, count: capacity)
            var found = [Int32](repeating: 0, count: capacity)
            let count = sessions.withUnsafeBufferPointer { ids in
                _bgw_session_members(ids.baseAddress, ids.count, &pids, &found, capacity)
            }
            // /proc cannot be listed (the runner refuses to start without it): nothing to wait for.
            guard count >= 0 else { return [] }
            if count <= capacity { return (0..<count).map { (pids[$0], found[$0]) } }
            capacity = count + 1024
        }
    }

    private func memberExited(pidfd: Int32) {
        guard let (id, pid, registration) = drainingMembers.removeValue(forKey: pidfd) else { return }
        drainingPids.remove(pid)
        if let registration { loop.unregister(registration) }
        if adoptsOrphans {
            // An orphan reparented to us is our child: reap it (ECHILD for anyone else's).
            var code: Int32 = 0, status: Int32 = 0
            if _bgw_waitid_pidfd(pidfd, WNOHANG, &code, &status) == 0, code != 0 { orphanOwners[pid] = nil }
        }
        close(pidfd)
        guard var group = draining[id] else { return }
        group.members.remove(pidfd)
        draining[id] = group
        guard group.members.isEmpty else { return }
        if adoptsOrphans {
            // Children of the dead members that had left the session are ours now.
            orphansToRecheck.insert(id)
            queueScan()
        } else {
            draining[id] = nil
            finish(group)
        }
    }

    /// Makes the signalfd of SIGCHLD (blocked in every thread: `ProcessRunner.init`) and watches it.
    private func watchChildren() throws(SystemCallError) {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGCHLD)
        let fd = signalfd(-1, &set, Int32(SFD_CLOEXEC | SFD_NONBLOCK))
        guard fd >= 0 else { throw SystemCallError(call: "signalfd", errno: errno) }
        do {
            childSignalRegistration = try loop.register(fd: fd) { [self] _ in childExited() }
        } catch {
            close(fd)
            throw error
        }
        childSignalFD = fd
    }

    /// SIGCHLD: reaps every exited child, the one path of every exit here. A worker's main
    /// process goes to `reap`; an orphan (reparented to us, the subreaper) that died on its own
    /// would stay a zombie otherwise. Nothing else in bgworkerd makes children (the
    /// spawn and its failure paths reap synchronously on this thread; bgworkerctl's posix_spawn
    /// is another program), so no one else's child is taken. No handler: a signalfd on the loop.
    private func childExited() {
        // Drained first (non-blocking fd): a SIGCHLD of a later exit wakes the loop again. Safe:
        // read writes at most the struct's size into it.
        var info = signalfd_siginfo()
        while withUnsafeMutableBytes(of: &info, { read(childSignalFD, $0.baseAddress, $0.count) }) > 0 {}
        var last: Int32 = 0
        while true {
            var pid: Int32 = 0
            // The same pid twice: it could not be reaped (cannot happen); do not spin on it.
            guard _bgw_exited_child(&pid) == 0, pid > 0, pid != last else { return }
            last = pid
            if let id = idsByGroup[pid], workers[id] != nil {
                reap(id: id)
            } else {
                _ = _bgw_reap_pid(pid)
                orphanOwners[pid] = nil
            }
        }
    }

    /// The whole group is gone: free the name and the record's slot, report the exit.
    private func finish(_ group: DrainingGroup) {
        idsByName[group.name] = nil
        // Before the report: whoever learns of the exit finds the record without this worker.
        if let slot = group.slot { groupRecord?.clear(slot) }
        // The last step of the reap, from an exit or scan handler on the loop (never nested in the caller's
        // code), so the runner's state is whole: the supervisor hears of it with no hop.
        events.deliverNow(group.event)
        endRunnerIfDone()
    }

    // MARK: - The notify protocol (docs/notify.md)

    /// The spec with `NOTIFY_SOCKET` (and the watchdog's variables) for a worker that speaks the
    /// protocol; from any thread (it reads only the immutable path).
    func withNotifyEnvironment(_ spec: LaunchSpec) throws(RunnerError) -> LaunchSpec {
        guard spec.usesNotify else { return spec }
        guard let notifyPath else {
            throw RunnerError(.invalidSpec, worker: spec.name, context: "ready = notify or a watchdog needs a notify socket, and this runner has none")
        }
        var spec = spec
        spec.environment["NOTIFY_SOCKET"] = notifyPath
        if spec.watchdog > 0 {
            spec.environment["WATCHDOG_USEC"] = String(clampedMicroseconds(spec.watchdog))
            spec.environment["WATCHDOG_PID"] = PreparedLaunch.watchdogPidPlaceholder
        }
        return spec
    }

    private func monotonicNow() -> MonotonicInstant {
        MonotonicInstant(nanoseconds: Int64(clamping: loop.now()))
    }

    private func openNotifySocket() throws(SystemCallError) {
        // A socket whose file was removed (a cleaner of the runtime directory) can no longer be
        // reached by a new worker: bind anew (one lstat a notify start).
        if let notifyReceiver {
            if notifyReceiver.isStillAtPath { return }
            closeNotifySocket()
        }
        guard let notifyPath else { throw SystemCallError(call: "no notify socket configured", errno: EINVAL) }
        let receiver = try NotifyReceiver(path: notifyPath)
        do {
            notifyRegistration = try loop.register(fd: receiver.fd) { [self] _ in notifyReadable() }
        } catch {
            receiver.close()
            throw error
        }
        notifyReceiver = receiver
    }

    private func closeNotifySocket() {
        if let notifyRegistration { loop.unregister(notifyRegistration) }
        notifyRegistration = nil
        notifyReceiver?.close()
        notifyReceiver = nil
        if let refusalTimer { loop.cancel(refusalTimer) }
        refusalTimer = nil
    }

    /// At most a batch per wake-up, so that a flood of datagrams leaves the loop to the bus and
    /// to exits in between (the socket is level-triggered: the loop comes back for the rest).
    /// A worker's STATUS= texts of one batch reach the supervisor as the last one (a flood of
    /// them costs one PropertiesChanged a batch, not one a datagram).
    private func notifyReadable() { readNotifications(atMost: 64) }

    /// Reads up to `limit` datagrams now (fewer when the socket runs dry).
    private func readNotifications(atMost limit: Int) {
        var statuses: [UInt64: (name: String, pid: Int32, text: String)] = [:]
        for _ in 0..<limit {
            guard let datagram = notifyReceiver?.receive() else { break }
            switch datagram {
            case .message(let pid, _, let message): notified(by: pid, message, statuses: &statuses)
            case .refused(let pid, let reason): refused(pid: pid, reason: reason)
            }
        }
        for (_, status) in statuses.sorted(by: { $0.key < $1.key }) {
            events.deliverNow(.status(name: status.name, pid: status.pid, text: status.text))
        }
    }

    /// A message counts when its sender is in the process group of a worker that speaks the
    /// protocol (the group's id is the worker's pid). Only the worker's own processes can be in
    /// it: the group is in the worker's own session, and setpgid joins groups of one's session only.
    private func notified(
        by sender: Int32, _ message: NotifyMessage, statuses: inout [UInt64: (name: String, pid: Int32, text: String)]
    ) {
        var group = getpgid(sender)
        if group < 0, errno == ESRCH, let known = senderGroups[sender] { group = known }
        guard group > 0, let id = idsByGroup[group], var worker = workers[id], var readiness = worker.readiness else {
            let reason = group < 0 ? "its sender is gone and cannot be placed" : "not a process of a worker that speaks the notify protocol"
            return refused(pid: sender, reason: reason)
        }
        if senderGroups.updateValue(group, forKey: sender) == nil {
            worker.recentSenders.append(sender)
            if worker.recentSenders.count > Self.recentSendersKept {
                senderGroups[worker.recentSenders.removeFirst()] = nil
            }
        }
        let effects = readiness.receive(message, now: monotonicNow())
        worker.readiness = readiness
        workers[id] = worker
        let (name, pid) = (worker.name, worker.pid)
        // Each event may reach the supervisor and come back as a stop (nested): state is stored
        // before, and looked up again after.
        for effect in effects {
            switch effect {
            case .ready: events.deliverNow(.ready(name: name, pid: pid))
            case .reloading: events.deliverNow(.reloading(name: name, pid: pid))
            case .stopping: events.deliverNow(.stopping(name: name, pid: pid))
            case .status(let text): statuses[id] = (name, pid, text)
            case .expired(let expiry): readinessExpired(id: id, expiry)
            }
        }
        armReadinessTimer(id: id)
    }

    private func refused(pid: Int32?, reason: String) {
        guard refusalTimer == nil else {
            refusalsSuppressed += 1
            return
        }
        events.deliverNow(.notifyRefused(pid: pid, reason: reason))
        refusalTimer = loop.schedule(after: .seconds(1)) { [self] in refusalWindowEnded() }
    }

    private func refusalWindowEnded() {
        refusalTimer = nil
        guard refusalsSuppressed > 0 else { return }
        let count = refusalsSuppressed
        refusalsSuppressed = 0
        events.deliverNow(.notifyRefusalsCounted(count))
        refusalTimer = loop.schedule(after: .seconds(1)) { [self] in refusalWindowEnded() }
    }

    /// Arms the worker's readiness timer for its deadline, unless one fires at or before it.
    private func armReadinessTimer(id: UInt64) {
        guard var worker = workers[id], let deadline = worker.readiness?.deadline else { return }
        let at = UInt64(max(deadline.nanoseconds, 0))
        if worker.readinessTimer != nil, worker.readinessTimerAt <= at { return }
        if let timer = worker.readinessTimer { loop.cancel(timer) }
        worker.readinessTimer = loop.schedule(at: at) { [self] in readinessTimerFired(id: id) }
        worker.readinessTimerAt = at
        workers[id] = worker
    }

    private func readinessTimerFired(id: UInt64) {
        guard workers[id] != nil else { return }
        workers[id]?.readinessTimer = nil
        // A busy loop may reach this timer before the socket: pings already queued there count.
        // The queue holds at most net.unix.max_dgram_qlen (512 under systemd, 10 by the kernel's
        // default) datagrams; more is what senders sent meanwhile. What is read may arm a later
        // timer (or stop the worker).
        readNotifications(atMost: Self.drainBeforeJudging)
        guard var worker = workers[id], var readiness = worker.readiness else { return }
        let expiry = readiness.timerFired(now: monotonicNow())
        worker.readiness = readiness
        workers[id] = worker
        guard let expiry else { return armReadinessTimer(id: id) }
        if let timer = worker.readinessTimer {
            loop.cancel(timer)
            workers[id]?.readinessTimer = nil
        }
        readinessExpired(id: id, expiry)
    }

    private func readinessExpired(id: UInt64, _ expiry: ReadinessExpiry) {
        guard var worker = workers[id] else { return }
        switch expiry {
        case .startTimeout:
            worker.exitOverride = .startTimeout
            workers[id] = worker
            stop(id: id)
        case .watchdog:
            guard !worker.stopping else { return }
            // SIGABRT to the main process alone (its core shows where it hung), SIGKILL to the
            // whole group after the stop timeout, as systemd's WatchdogSignal does.
            worker.exitOverride = .watchdog
            worker.stopping = true
            worker.readiness?.stop()
            _ = kill(worker.pid, SIGABRT)
            _ = kill(worker.pid, SIGCONT)
            workers[id] = worker
            armKill(id: id)
        case .stopTimeout:
            // STOPPING=1 and still there after the stop timeout.
            killGroup(id: id)
        }
    }
}
