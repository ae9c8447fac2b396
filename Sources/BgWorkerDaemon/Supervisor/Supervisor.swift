// The one owner of the daemon's state. Everything that happens reaches it as an event (a bus
// call, a worker's exit, a start result, a due timer, an HA role report, a reload, SIGTERM); it
// asks the pure core (`Fleet`) what to do and carries the answer out: start and stop workers,
// arm timers, emit signals and PropertiesChanged, write the state file, tell systemd.
// See docs/design.md.
import BgWorkerAPI
import BgWorkerCore
import CShims
import DBus
import Glibc
import Logging
import Synchronization

/// What the supervisor needs to know about the daemon it runs in.
public struct SupervisorSettings: Sendable {
    /// Where the configuration comes from (Reload and SIGHUP read it again).
    public var loader: ConfigurationLoader
    /// The runner kind in use (`process` or `systemd`); a reload validates against it.
    public var runnerKind: RunnerKind
    /// Put into every worker's environment as `DBUS_SYSTEM_BUS_ADDRESS`, so that workers follow
    /// the daemon's bus; nil when the daemon uses the default system bus.
    public var busAddressForWorkers: String?
    public var version: String
    /// Where maintenance inhibitors are kept as FIFOs, so that a restarted daemon takes them back
    /// (`$RUNTIME_DIRECTORY/inhibitors`); nil: plain pipes, forgotten when the daemon ends.
    public var inhibitorDirectory: String?

    public init(loader: ConfigurationLoader, runnerKind: RunnerKind, busAddressForWorkers: String?, version: String,
                inhibitorDirectory: String? = nil) {
        self.loader = loader
        self.runnerKind = runnerKind
        self.busAddressForWorkers = busAddressForWorkers
        self.version = version
        self.inhibitorDirectory = inhibitorDirectory
    }
}

/// The supervisor actor. Create it, `prepare()` its bus objects, `attach` a connection,
/// `start()` the workers; `shutdown()` stops them all.
public actor Supervisor {
    private var fleet: Fleet
    private var configuration: Configuration
    private let runner: any WorkerRunner
    /// The daemon's event loop, which the runner works on: the actor runs there, so an exit,
    /// a start's answer or a due timer reaches it with no thread switch, and the restart it
    /// decides is spawned on that same thread (docs/design.md).
    private let loop: EventLoop
    public nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }
    private let settings: SupervisorSettings
    private let logger: Logger
    private let logLevel: LogLevelControl
    private let notifier: ServiceNotifier
    private let access = AccessPolicy()
    private var stateStore: StateStore
    /// Blocking work (the state file, configuration reading, NSS) runs here, off the loop.
    private let io: BlockingWork
    /// Whether the last write of the state file failed (set on `io`, in the order of the writes):
    /// the file then holds choices the fleet no longer has, so the next reload writes first.
    private let stateFileStale = StaleFlag()
    /// Each worker's `user`/`group` resolved to ids when the configuration was loaded (off the
    /// loop), handed to the spawn.
    private var credentials: [String: WorkerCredentials.Resolution] = [:]
    /// Bus requests that change workers are persisted and applied one at a time, in the order
    /// they came: a request waits here while an earlier one's intent is being written.
    private var requestInProgress = false
    private var requestQueue: [CheckedContinuation<Void, Never>] = []
    /// The origin of the fleet's monotonic time (the loop's clock: CLOCK_MONOTONIC, or a test's).
    private let clockOrigin: UInt64

    private var manager: ExportedObject?
    private var workerObjects: [String: ExportedObject] = [:]
    private var connection: DBusConnection?

    /// Workers with a start in flight (a `spawn` went to the runner, no answer yet).
    private var spawning: Set<String> = []
    /// Exits the runner reported before the start that made the process was answered.
    private var earlyExits: [String: (pid: Int32, status: WorkerExit)] = [:]
    /// Notify events (READY=1, STATUS=...) that overtook the answer to `start`, in order: the
    /// systemd runner reports its unit active while the answer is on its way, and a process
    /// runner worker's first datagram can be read before the answer's loop job runs.
    private var earlyNotifications: [String: [(pid: Int32, event: FleetEvent)]] = [:]
    /// `runner.adopt` runs: its notify events (an adopted unit's StatusText) come before the
    /// fleet knows the adopted pids, and are kept in `earlyNotifications` until it does.
    private var adopting = false
    /// Each worker's pending timer (restart delay, start limit...), on the loop.
    private var timers: [String: LoopTimer] = [:]
    /// The fleet's role timer (the end of a bounded `on-lost = keep`).
    private var roleTimer: LoopTimer?

    private var settleWaiters: [String: [CheckedContinuation<Void, Never>]] = [:]
    private var drainWaiters: [CheckedContinuation<Void, Never>] = []
    /// Maintenance mode's inhibitors (their read ends are on the loop) and the `Inhibit` calls
    /// that wait for the workers maintenance holds to be gone.
    private var inhibitors: InhibitorTable
    private var maintenanceWaiters: [CheckedContinuation<Void, Never>] = []
    private var isStarted = false
    private var isAdopted = false
    /// Until `start` (the daemon owns its bus name), starts and stops are kept here, not given to
    /// the runner: a daemon that finds its name taken has then changed nothing that runs.
    private var holdingRunner = true
    private var heldRunnerActions: [FleetAction] = []
    /// Workers whose first start (at `start()`) has not been answered yet, and who waits for that.
    private var awaitingFirstStart: Set<String> = []
    private var firstStartsAnswered: CheckedContinuation<Void, Never>?
    private var isShuttingDown = false

    private var roleSourceTask: Task<Void, Never>?
    /// Reports of a role source that was replaced (reload, reconnect) are ignored.
    private var roleGeneration: UInt64 = 0
    private var lastStatusText = ""
    private var lastStatusSentAt: UInt64?
    private var statusFlush: LoopTimer?
    private static let statusInterval: UInt64 = 100_000_000

    public init(
        configuration: Configuration, runner: any WorkerRunner, settings: SupervisorSettings,
        logger: Logger, logLevel: LogLevelControl, notifier: ServiceNotifier = ServiceNotifier(),
        blockingWork: BlockingWork? = nil
    ) throws {
        io = try blockingWork ?? BlockingWork()
        // Called off the loop (the daemon's main task), so the look-ups may block here.
        credentials = Self.resolveCredentials(configuration)
        self.configuration = configuration
        self.runner = runner
        loop = runner.loop
        clockOrigin = runner.loop.now()
        self.settings = settings
        self.logger = logger
        self.logLevel = logLevel
        self.notifier = notifier
        stateStore = StateStore(directory: configuration.daemon.stateDirectory)
        let loaded = stateStore.load()
        if let message = loaded.message(path: stateStore.path) { logger.error("state file: \(message)") }
        fleet = Fleet(configuration: configuration, enableState: loaded.state, role: configuration.ha.source.initialRole)
        if let warning = access.configure(adminGroup: configuration.daemon.adminGroup) { logger.warning("\(warning)") }
        runner.logs?.configure(configuration.logBufferLines)
        // Those a previous daemon left: maintenance holds from the first start on (`adopt`).
        inhibitors = InhibitorTable(directory: settings.inhibitorDirectory)
        for problem in inhibitors.load() { logger.warning("inhibitor dropped: \(problem)") }
        for inhibitor in inhibitors.held {
            logger.notice("maintenance inhibitor of \(inhibitor.who) (\(inhibitor.why)), uid \(inhibitor.uid) pid \(inhibitor.pid), taken back from the previous daemon")
        }
    }

    // MARK: - Life cycle

    /// Builds the manager object and one object per worker, with their current values.
    public func prepare() throws {
        guard manager == nil else { return }
        let factory = BusServiceFactory(supervisor: self, access: access)
        manager = try factory.makeManager(
            version: settings.version, runner: runner.kind, logLevel: configuration.daemon.logLevel,
            role: fleet.roleState.reported, maintenance: !inhibitors.isEmpty)
        let now = wallClockMicroseconds()
        for status in fleet.workers {
            workerObjects[status.name] = try factory.makeWorker(status, stateChangedAt: now)
        }
    }

    /// Exports every object on `connection` (workers first, then the manager) and starts the HA
    /// source on it. Call before requesting the bus name, so that whoever sees the name sees
    /// every worker.
    public func attach(_ connection: DBusConnection) {
        self.connection = connection
        // The first signal of each step goes out before the step's other work (the loop yields
        // once after waking the connection thread): READY=1 -> running, docs/benchmarks.md.
        loop.setIterationHook { [weak connection] in connection?.yieldOnNextWake() }
        for object in workerObjects.values {
            exportObject(object, on: connection)
        }
        if let manager { exportObject(manager, on: connection) }
        restartRoleSource()
    }

    /// The daemon's bus connection is gone: objects are unexported from it, the HA source stops
    /// and, with HA configured, the role is `unknown` until a new connection reads it again.
    /// Workers go on as the run rule says (with `on-lost = keep`, they keep running).
    public func connectionLost() {
        roleSourceTask?.cancel()
        roleSourceTask = nil
        roleGeneration &+= 1
        if let connection {
            for path in ([manager] + workerObjects.values.map { Optional($0) }).compactMap({ $0?.path }) {
                connection.unexport(path)
            }
        }
        connection = nil
        loop.setIterationHook(nil)
        if configuration.ha.source != .none {
            setRole(HARoleReport(.unknown, why: "the daemon's bus connection is down"))
        }
    }

    /// Starts the runner plumbing, takes over what a previous daemon left running (for runners
    /// that can) and sets every worker's state, without starting or stopping anything. Called
    /// before the bus name is requested, so that a client that sees the name sees each adopted
    /// worker `running` with its pid (issue 16).
    public func adopt() async {
        guard !isAdopted else { return }
        isAdopted = true
        runner.setEventHandler { [weak self] event in
            self?.onLoop { $0.runnerReported(event) }
        }
        // Inhibitors taken back at init: watched, and in force before the first start.
        for index in inhibitors.held.indices.reversed() {
            do {
                try watch(&inhibitors.held[index])
            } catch {
                // Unwatched it could never end: dropped, as its holder would be told by no one.
                logger.error("\(error); the inhibitor is dropped")
                if let dropped = inhibitors.remove(inhibitors.held[index].id) { close(dropped.readFD) }
            }
        }
        if !inhibitors.isEmpty { maintenanceChanged() }
        let specs = configuration.workers.map(launchSpec)
        adopting = true
        let adopted = await runner.adopt(specs)
        adopting = false
        for (name, pid) in adopted.sorted(by: { $0.key < $1.key }) {
            logger.notice("adopted worker \(name) (pid \(pid))", metadata: ["worker": "\(name)"])
        }
        let actions = fleet.start(now: now(), adopted: adopted)
        awaitingFirstStart = Set(actions.compactMap { action -> String? in
            if case .spawn(let name, _) = action { name } else { nil }
        })
        perform(actions)
        for (name, early) in earlyNotifications where !spawning.contains(name) {
            earlyNotifications[name] = nil
            for early in early where early.pid == adopted[name] { apply(early.event) }
        }
    }

    /// Once the daemon owns its bus name: stops what the adoption left over, then starts every
    /// worker that should run; returns once each of those first starts has been answered.
    public func start() async {
        guard !isStarted else { return }
        isStarted = true
        await adopt()
        await runner.finishAdoption()
        holdingRunner = false
        let held = heldRunnerActions
        heldRunnerActions = []
        for action in held { submitToRunner(action) }
        // READY=1 follows this: every first start has been answered (running, or backoff...).
        // Not "every worker settled": a worker restarting with no delay may never be.
        // The check is inside the continuation's body: an `await` may let the answers' jobs run
        // before the body does.
        await withCheckedContinuation { continuation in
            if awaitingFirstStart.isEmpty { continuation.resume() } else { firstStartsAnswered = continuation }
        }
    }

    private func firstStartAnswered(_ name: String) {
        guard awaitingFirstStart.remove(name) != nil, awaitingFirstStart.isEmpty else { return }
        firstStartsAnswered?.resume()
        firstStartsAnswered = nil
    }

    /// Stops every worker in parallel (SIGTERM, SIGKILL after each one's stop timeout) and
    /// returns once all are gone and the runner has shut down.
    public func shutdown() async {
        guard !isShuttingDown else { return }
        isShuttingDown = true
        if holdingRunner {
            // The daemon never owned its name (another one runs): it started nothing, and what
            // it adopted belongs to the other daemon, so nothing is stopped.
            logger.notice("leaving every worker as it is: this daemon never started")
            heldRunnerActions = []
        } else {
            logger.notice("stopping every worker")
            apply(.shutdown)
            await withCheckedContinuation { continuation in
                if fleet.hasProcesses { drainWaiters.append(continuation) } else { continuation.resume() }
            }
        }
        for (_, timer) in timers { loop.cancel(timer) }
        timers = [:]
        if let roleTimer { loop.cancel(roleTimer) }
        roleTimer = nil
        if let statusFlush { loop.cancel(statusFlush) }
        statusFlush = nil
        roleSourceTask?.cancel()
        if holdingRunner { await runner.release() } else { await runner.shutdown() }
    }

    // MARK: - Bus methods (called by the service after authorization)

    /// Enables the worker; returns once it is settled (running, standby, ...).
    func enable(_ name: String) async throws(DBusError) {
        try await applyAndWaitUntilSettled(.enable(name), name)
    }

    /// Disables the worker; returns once its process is gone.
    func disable(_ name: String) async throws(DBusError) {
        try await applyAndWaitUntilSettled(.disable(name), name)
    }

    /// Restarts the worker; returns once it runs again (or rests, as the rules say).
    func restart(_ name: String) async throws(DBusError) {
        try await applyAndWaitUntilSettled(.restart(name), name)
    }

    /// The emergency stop: returns once its process (group or unit) is gone. Nothing is written
    /// to disk, so it works with a read-only or full state directory.
    func stop(_ name: String) async throws(DBusError) {
        try await applyAndWaitUntilSettled(.stop(name), name)
    }

    /// Starts a stopped or failed worker; returns once it runs (or rests, as the rules say).
    func start(_ name: String) async throws(DBusError) {
        try await applyAndWaitUntilSettled(.start(name), name)
    }

    /// The worker's own `LogLevel` (nil: follow the manager's); not persisted.
    func setWorkerLogLevel(_ name: String, _ level: LogLevel?, by sender: String) throws(DBusError) {
        try applyRequest(.workerLogLevel(name, level))
        logger.notice("log level of worker \(name) set to \(level?.rawValue ?? "the manager's") by \(sender)", metadata: ["worker": "\(name)"])
    }

    /// `Reload`: an invalid configuration changes nothing and answers InvalidConfig; one whose
    /// replaced choices cannot be saved changes nothing and answers StateNotSaved.
    func reloadForBus() async throws(DBusError) {
        try await reload(trigger: "Reload over the bus")
    }

    func workerList() -> [WorkerStatus] { fleet.workers }

    func isConfigured(_ name: String) -> Bool { configuration.worker(named: name) != nil }

    func workerNames() -> [String] { configuration.workers.map(\.name) }

    /// `Logs`: the worker's last `count` output lines, oldest first; none where the runner keeps
    /// none (the systemd runner: see the journal).
    func logs(_ name: String, count: Int) throws(DBusError) -> [WorkerLogLine] {
        guard isConfigured(name) else { throw FleetError.noSuchWorker(name).busError(workerNames: workerNames()) }
        return runner.logs?.last(count, of: name) ?? []
    }

    /// `FollowLogs` (beyond the contract, docs/bgworkerctl.md): the caller's end of a socket that
    /// gets the worker's last `count` lines and then each new one. Only the process runner keeps
    /// output to follow; the systemd runner's is in the journal.
    func followLogs(_ name: String, count: Int) throws(DBusError) -> Int32 {
        guard isConfigured(name) else { throw FleetError.noSuchWorker(name).busError(workerNames: workerNames()) }
        guard let logs = runner.logs else {
            throw DBusError.notSupported(
                "the systemd runner's workers write to the journal: journalctl --follow --unit \(systemdUnitName(forWorker: name))")
        }
        do {
            return try logs.follow(name, last: count)
        } catch {
            switch error {
            case .tooManyFollowers:
                throw DBusError(InhibitorTable.limitsExceeded,
                                "\(WorkerLogBuffers.maxFollowers) followers of workers' output at once is the most; close one first")
            case .system(let call, let code):
                throw DBusError.failed("cannot follow \(name)'s output: \(call): \(errnoText(code))")
            }
        }
    }

    /// `LogLevel` set over the bus: the daemon's level changes at once (the DBus layer stores
    /// the property and emits PropertiesChanged, which running workers follow).
    func setLogLevel(_ level: LogLevel, by sender: String) {
        applyLogLevel(level)
        apply(.managerLogLevel(level))
        logger.notice("log level set to \(level.rawValue) by \(sender)")
    }

    // MARK: - Maintenance (Inhibit)

    /// `Inhibit`: a new inhibitor; returns the write end of its FIFO once every worker that
    /// maintenance holds is gone (`Fleet.maintenanceSettled`). The daemon holds that end until
    /// the reply has gone out (or failed), so the inhibitor cannot end before the caller has it.
    func inhibit(who: String, why: String, uid: UInt32, pid: UInt32) async throws(DBusError) -> UnixFD {
        var (inhibitor, writeEnd) = try inhibitors.make(who: who, why: why, uid: uid, pid: pid, since: wallClockMicroseconds())
        inhibitors.add(inhibitor)
        do {
            try watch(&inhibitor)
            inhibitors.held[inhibitors.held.count - 1] = inhibitor
        } catch {
            _ = inhibitors.remove(inhibitor.id)
            close(inhibitor.readFD)
            throw error
        }
        logger.notice("maintenance inhibitor taken by \(who) (\(why)), uid \(uid) pid \(pid); \(inhibitors.held.count) held")
        maintenanceChanged()
        // Checked and registered with no suspension between (as in applyAndWaitUntilSettled).
        if !fleet.maintenanceSettled {
            await withCheckedContinuation { maintenanceWaiters.append($0) }
        }
        return writeEnd
    }

    /// Registers the inhibitor's read end with the loop, for HUP only (epoll always reports HUP
    /// and ERR): with EPOLLIN, a holder writing without end kept the loop draining (half a core,
    /// scripts/adversarial/maintenance.py step 9); now its writes stop at the full pipe.
    private func watch(_ inhibitor: inout Inhibitor) throws(DBusError) {
        let id = inhibitor.id
        do {
            inhibitor.registration = try loop.register(fd: inhibitor.readFD, events: 0) { [weak self] events in
                self?.onLoop { $0.inhibitorReady(id, events: events) }
            }
        } catch {
            throw DBusError.failed("cannot watch the inhibitor of \(inhibitor.who): \(error)")
        }
    }

    /// `ListInhibitors`, oldest first.
    func inhibitorList() -> [Inhibitor] { inhibitors.held }

    /// The read end of an inhibitor is ready: data a holder wrote (drained, ignored), or every
    /// write end closed, which ends the inhibitor.
    private func inhibitorReady(_ id: UInt64, events: UInt32) {
        guard let fd = inhibitors.held.first(where: { $0.id == id })?.readFD,
              InhibitorTable.writersGone(fd, events: events),
              let inhibitor = inhibitors.remove(id) else { return }
        if let registration = inhibitor.registration { loop.unregister(registration) }
        close(inhibitor.readFD)
        logger.notice("maintenance inhibitor of \(inhibitor.who) (\(inhibitor.why)) released; \(inhibitors.held.count) held")
        maintenanceChanged()
    }

    /// Tells the fleet the oldest inhibitor (or none), after `Maintenance` is set when it flips:
    /// PropertiesChanged goes out before the state changes it causes, as `HARole`'s does.
    private func maintenanceChanged() {
        let held = !inhibitors.isEmpty
        if held != (fleet.maintenance != nil) {
            logger.notice(held ? "maintenance mode begins: held workers stop" : "maintenance mode ends: held workers start again")
            setManagerProperty("Maintenance", .bool(held))
        }
        apply(.maintenance(inhibitors.oldestHold))
    }

    // MARK: - Reload

    /// SIGHUP: as `Reload`; problems are logged.
    public func reloadFromSignal() async {
        do {
            try await reload(trigger: "SIGHUP")
        } catch {
            // Each problem was logged by `reload`.
        }
    }

    /// Reads the configuration again and applies it; an invalid one changes nothing. The files
    /// are read and parsed, and users and groups looked up, on the blocking-work thread; the
    /// result is applied on the loop in one step.
    private func reload(trigger: String) async throws(DBusError) {
        notifier.reloading(status: "reloading the configuration")
        logger.notice("reloading the configuration (\(trigger))")
        let (loader, kind) = (settings.loader, settings.runnerKind)
        let (loaded, resolved) = await io.run { () -> (Result<Configuration, ConfigErrors>, [String: WorkerCredentials.Resolution]) in
            let loaded = loader.load(validatingFor: kind)
            guard case .success(let configuration) = loaded else { return (loaded, [:]) }
            return (loaded, Supervisor.resolveCredentials(configuration))
        }
        defer { notifier.ready(status: statusText()) }
        let new: Configuration
        switch loaded {
        case .success(let configuration):
            new = configuration
        case .failure(let errors):
            for error in errors.errors { logger.error("invalid configuration, nothing changed: \(error)") }
            throw DBusError(BgWorkerBus.ErrorName.invalidConfig, errors.description)
        }
        // Choices made over the bus that the reload replaces (a worker's configured `enabled`
        // changed) are saved before anything changes, as Enable/Disable do: applied with a failed
        // write, a later reload could make the stale file look current to the next daemon.
        // Intents change only in the request queue, so what is applied is what was written.
        await enterRequestQueue()
        defer { leaveRequestQueue() }
        let store = new.daemon.stateDirectory == configuration.daemon.stateDirectory
            ? stateStore : StateStore(directory: new.daemon.stateDirectory)
        // A file left stale by a failed write is written too: else a reload that makes its old
        // lines look current again (a configured `enabled` changed back) would lose the choice.
        var candidate = fleet
        let planned = Self.lastPersisted((try? candidate.handle(.reload(new), now: now())) ?? [])
        let written = planned ?? (stateFileStale.value ? candidate.enableState : nil)
        if let written, let error = await save(written, to: store) {
            logger.error("cannot write the state file \(store.path): \(error); \(trigger) refused, nothing changed")
            throw DBusError(
                BgWorkerBus.ErrorName.stateNotSaved,
                "cannot reload: the choices it replaces cannot be saved in \(store.path) (\(error)); nothing changed")
        }
        credentials = resolved
        let old = configuration
        configuration = new
        runner.logs?.configure(new.logBufferLines)
        if new.daemon.logLevel != old.daemon.logLevel {
            applyLogLevel(new.daemon.logLevel)
            setManagerProperty("LogLevel", .string(new.daemon.logLevel.rawValue))
        }
        stateStore = store
        if let warning = access.configure(adminGroup: new.daemon.adminGroup) { logger.warning("\(warning)") }
        if new.daemon.runner != old.daemon.runner {
            logger.warning("[daemon] runner changed to '\(new.daemon.runner.rawValue)': it takes effect when bgworkerd restarts")
        }
        // A changed HA source: the core takes the new source's initial role (standalone or
        // unknown) within the reload, before it starts any added worker.
        let sourceChanged = new.ha.source != old.ha.source
        if sourceChanged {
            let why = new.ha.source == .none ? "HA is no longer configured" : "HA source changed"
            announceRole(HARoleReport(new.ha.source.initialRole, why: why))
        }
        apply(.reload(new), written: written)
        if sourceChanged { restartRoleSource() }
        logger.notice("configuration reloaded: \(new.workers.count) workers")
    }

    // MARK: - HA role

    /// Runs the configured HA source on the current connection (replacing any previous one).
    private func restartRoleSource() {
        roleSourceTask?.cancel()
        roleSourceTask = nil
        roleGeneration &+= 1
        guard let connection, configuration.ha.source != .none, configuration.ha.source != .pacemaker else { return }
        guard let source = makeRoleSource(for: configuration.ha, logger: logger) else {
            logger.warning("no HA source for \(configuration.ha.source) in this build; the role stays unknown")
            return
        }
        let generation = roleGeneration
        // Strong: the task ends when it is cancelled (reload, reconnect, shutdown) or its
        // connection ends, and the supervisor lives as long as the daemon anyway.
        roleSourceTask = Task.detached { [self] in
            await source.run(on: connection) { report in
                await self.roleReported(report, generation: generation)
            }
        }
    }

    /// `SetHARole` from root (source `pacemaker`): sets or renews the role and returns once every
    /// worker it stops is gone, so Pacemaker's `demote` here ends before its `promote` elsewhere.
    func setHARole(_ text: String, by sender: String) async throws(DBusError) {
        guard configuration.ha.source == .pacemaker else {
            throw DBusError(BgWorkerBus.ErrorName.notSupported, "SetHARole needs [ha] source = \"pacemaker\"")
        }
        guard let role = HARole(rawValue: text), role != .standalone else {
            throw DBusError.invalidArgs("unknown role '\(text)'; known: primary secondary unknown")
        }
        setRole(HARoleReport(role, why: "SetHARole from \(sender)"))
        for name in fleet.workers.filter({ $0.state == .stopping }).map(\.name) {
            await waitUntilSettled(name)
        }
    }

    private func roleReported(_ report: HARoleReport, generation: UInt64) {
        guard generation == roleGeneration else { return }
        setRole(report)
    }

    private func setRole(_ report: HARoleReport) {
        announceRole(report)
        apply(.roleChanged(report.role))
    }

    /// Logs, sets `HARole` and emits `HARoleChanged` when the reported role is about to change.
    private func announceRole(_ report: HARoleReport) {
        guard report.role != fleet.roleState.reported else { return }
        logger.notice("HA role \(report.role.rawValue) (\(report.why))", metadata: ["role": "\(report.role.rawValue)"])
        setManagerProperty("HARole", .string(report.role.rawValue))
        emitManagerSignal(BgWorkerBus.Signal.haRoleChanged, [.string(report.role.rawValue)])
    }

    private func roleTimerDue(_ timer: LoopTimer) {
        guard roleTimer == timer else { return }
        roleTimer = nil
        let kept = fleet.roleState.inForce
        if fleet.roleState.leaseEnds(at: now()) {
            // Announced before the core stops anything, as a source's report would be.
            let lease = fleet.roleState.lease ?? 0
            logger.warning("no SetHARole within the lease of \(lease) s ([ha] lease): the cluster stack no longer renews the role")
            announceRole(HARoleReport(.unknown, why: "lease of \(lease) s ran out"))
        }
        apply(.roleTimerFired)
        if fleet.roleState.keepExpired, kept != fleet.roleState.inForce {
            logger.warning(
                "HA role unknown for \(fleet.roleState.keepFor) s ([ha] keep-for): role \(kept.rawValue) no longer kept, its workers stop",
                metadata: ["role": "unknown"])
        }
    }

    // MARK: - Events from the runner and timers

    /// The one entry from the loop into the actor: a runner's answer or event, a loop timer.
    ///
    /// Safe because: the loop is this actor's executor (`unownedExecutor`), and its thread runs
    /// one thing at a time, a job of the actor or a handler or a timer, never two at once. These
    /// closures are called by the loop on that thread, never nested in a job of ours (the
    /// runner's contract, `WorkerRunner`; loop timers fire from the loop itself), so no code of
    /// the actor is running or interrupted. `assumeIsolated` checks it (`EventLoop.checkIsolated`)
    /// and traps anywhere else: LoopTests proves the trap and that handlers run on the loop.
    private nonisolated func onLoop(_ body: (isolated Supervisor) -> Void) {
        assumeIsolated(body)
    }

    private func startAnswered(_ name: String, _ result: Result<Int32, RunnerError>) {
        switch result {
        case .success(let pid): startSucceeded(name, pid: pid)
        case .failure(let error): startFailed(name, error)
        }
    }

    private func startSucceeded(_ name: String, pid: Int32) {
        spawning.remove(name)
        apply(.processStarted(name, pid: pid))
        for early in earlyNotifications.removeValue(forKey: name) ?? [] where early.pid == pid { apply(early.event) }
        if let early = earlyExits.removeValue(forKey: name), early.pid == pid {
            apply(.processExited(name, pid: pid, status: early.status))
        }
        firstStartAnswered(name)
    }

    private func startFailed(_ name: String, _ error: RunnerError) {
        spawning.remove(name)
        earlyExits[name] = nil
        earlyNotifications[name] = nil
        logger.error("cannot start worker \(name): \(error)", metadata: ["worker": "\(name)"])
        let reason = error.errno.map { "\(error.context): \(errnoText($0))" } ?? error.context
        apply(.startFailed(name, reason: reason, retry: error.code != .outOfFileDescriptors))
        firstStartAnswered(name)
    }

    private func runnerReported(_ event: RunnerEvent) {
        switch event {
        case .exited(let name, let pid, let status):
            if fleet.status(of: name)?.pid == pid {
                apply(.processExited(name, pid: pid, status: status))
            } else if spawning.contains(name) {
                // The exit overtook the answer to `start`: keep it until the pid is known.
                earlyExits[name] = (pid, status)
            } else {
                logger.debug("ignoring the exit of pid \(pid) of worker \(name): not its process")
            }
        case .ready(let name, let pid):
            notified(name, pid: pid, .processReady(name, pid: pid))
        case .reloading(let name, let pid):
            notified(name, pid: pid, .processReloading(name, pid: pid))
        case .stopping(let name, let pid):
            notified(name, pid: pid, .processStopping(name, pid: pid))
        case .status(let name, let pid, let text):
            notified(name, pid: pid, .processStatus(name, pid: pid, text: text))
        case .notifyRefused(let pid, let reason):
            logger.warning("notify message refused\(pid.map { " from pid \($0)" } ?? ""): \(reason)")
        case .notifyRefusalsCounted(let count):
            logger.warning("\(count) more notify messages refused in the last second")
        }
    }

    private func notified(_ name: String, pid: Int32, _ event: FleetEvent) {
        if spawning.contains(name) || adopting, fleet.status(of: name)?.pid != pid {
            // Bounded: a start's answer comes, and a flood of STATUS= before it keeps the last.
            var early = earlyNotifications[name, default: []]
            if early.count >= 16 {
                early.remove(at: early.firstIndex { if case .processStatus = $0.event { true } else { false } } ?? 0)
            }
            early.append((pid, event))
            earlyNotifications[name] = early
        } else {
            apply(event)
        }
    }

    private func timerDue(_ name: String, _ timer: LoopTimer) {
        guard timers[name] == timer else { return }
        timers[name] = nil
        apply(.timerFired(name))
    }

    // MARK: - Carrying out the core's answers

    /// The fleet's monotonic time: nanoseconds of the loop's clock since the supervisor was made.
    private func now() -> MonotonicInstant {
        MonotonicInstant(nanoseconds: Int64(loop.now() &- clockOrigin))
    }

    /// A request that writes nothing (a worker's log level): its errors are the contract's.
    private func applyRequest(_ event: FleetEvent) throws(DBusError) {
        var candidate = fleet
        let actions = try handle(event, on: &candidate)
        fleet = candidate
        perform(actions)
    }

    private func handle(_ event: FleetEvent, on candidate: inout Fleet) throws(DBusError) -> [FleetAction] {
        do {
            return try candidate.handle(event, now: now())
        } catch {
            throw error.busError(workerNames: configuration.workers.map(\.name))
        }
    }

    /// A bus request that changes a worker. It is worked out on a copy of the fleet: a new intent
    /// (Enable/Disable) reaches the disk, fsync'ed on the blocking-work thread, before it is
    /// applied, so a choice that cannot be saved changes nothing (StateNotSaved) rather than
    /// being lost at the next restart. The loop goes on meanwhile (other workers' exits and
    /// respawns); once written, the request is applied to the fleet as it is then. Intents
    /// change only through requests, which wait their turn (`enterRequestQueue`), so what is
    /// applied is what was written.
    private func persistAndApply(_ event: FleetEvent) async throws(DBusError) {
        var candidate = fleet
        var actions = try handle(event, on: &candidate)
        let written = Self.lastPersisted(actions)
        if let written {
            let store = stateStore
            if let error = await save(written, to: store) {
                logger.error("cannot write the state file \(store.path): \(error); \(event) refused, nothing changed")
                throw stateNotSaved(event, error)
            }
            candidate = fleet
            actions = try handle(event, on: &candidate)
        }
        fleet = candidate
        perform(Self.unwritten(actions, written))
    }

    /// The state the last `.persist` of `actions` would write, if any.
    private static func lastPersisted(_ actions: [FleetAction]) -> EnableState? {
        actions.lazy.compactMap { action -> EnableState? in
            if case .persist(let state) = action { state } else { nil }
        }.last
    }

    /// `actions` without a `.persist` of the state `written` before they were worked out again
    /// (a different state, changed meanwhile, is written as usual).
    private static func unwritten(_ actions: [FleetAction], _ written: EnableState?) -> [FleetAction] {
        guard let written else { return actions }
        return actions.filter { if case .persist(let state) = $0 { state != written } else { true } }
    }

    /// Writes `state` (write, fsync, rename) on the blocking-work thread before it is applied;
    /// the error, if any (then nothing is applied, and the file is no staler than it was).
    private func save(_ state: EnableState, to store: StateStore) async -> SystemCallError? {
        await io.run(Self.saving(state, to: store, stale: stateFileStale, applied: false))
    }

    /// The blocking write of `state`. A success leaves the file current; a failure of a state
    /// already `applied` to the fleet leaves it stale.
    private nonisolated static func saving(
        _ state: EnableState, to store: StateStore, stale: StaleFlag, applied: Bool
    ) -> @Sendable () -> SystemCallError? {
        {
            do throws(SystemCallError) {
                try store.save(state)
                stale.value = false
                return nil
            } catch {
                if applied { stale.value = true }
                return error
            }
        }
    }

    /// Waits until the requests that came before are persisted and applied.
    private func enterRequestQueue() async {
        // Checked inside the continuation's body, which runs on the actor with nothing in between.
        await withCheckedContinuation { continuation in
            if requestInProgress {
                requestQueue.append(continuation)
            } else {
                requestInProgress = true
                continuation.resume()
            }
        }
    }

    private func leaveRequestQueue() {
        if requestQueue.isEmpty {
            requestInProgress = false
        } else {
            requestQueue.removeFirst().resume()  // the next request goes on; still in progress
        }
    }

    private func stateNotSaved(_ event: FleetEvent, _ error: SystemCallError) -> DBusError {
        let (verb, name): (String, String) =
            switch event {
            case .enable(let name): ("enable", name)
            case .disable(let name): ("disable", name)
            default: ("change", "?")
            }
        return DBusError(
            BgWorkerBus.ErrorName.stateNotSaved,
            "cannot \(verb) worker '\(name)': its intent cannot be saved in \(stateStore.path) (\(error)); "
                + "nothing changed. Stop (bgworkerctl stop \(name)) stops it without writing to disk")
    }

    /// An event that cannot be refused (anything but enable/disable/restart); `written`: a state
    /// already saved, not written again.
    private func apply(_ event: FleetEvent, written: EnableState? = nil) {
        do {
            perform(Self.unwritten(try fleet.handle(event, now: now()), written))
        } catch {
            logger.error("unexpected refusal of \(event): \(error)")
        }
    }

    private func perform(_ actions: [FleetAction]) {
        // Processes first: the runner starts or stops them while the rest of this step (signals,
        // logs, the fsync'ed state file) is carried out. Submitted in order, carried out in order
        // (see `WorkerRunner`); the answer to a start comes back to the actor.
        for action in actions {
            switch action {
            case .spawn, .stop:
                if holdingRunner { heldRunnerActions.append(action) } else { submitToRunner(action) }
            default:
                continue
            }
        }
        for action in actions {
            switch action {
            case .spawn:
                continue
            case .stop(let name, let pid):
                logger.info("stopping worker \(name) (pid \(pid))", metadata: ["worker": "\(name)"])
            case .scheduleTimer(let name, let at):
                schedule(name, at: at)
            case .cancelTimer(let name):
                if let timer = timers.removeValue(forKey: name) { loop.cancel(timer) }
            case .scheduleRoleTimer(let at):
                scheduleRoleTimer(at: at)
            case .cancelRoleTimer:
                if let roleTimer { loop.cancel(roleTimer) }
                roleTimer = nil
            case .stateChanged(let name, let state, let pid, let reason):
                stateChanged(name, state: state, pid: pid, reason: reason)
            case .propertiesChanged(let name, let properties):
                setWorkerProperties(name, properties.map(WorkerPropertyValues.value))
            case .workerAdded(let status):
                workerAdded(status)
            case .workerRemoved(let name):
                if let object = workerObjects.removeValue(forKey: name) {
                    connection?.unexport(object.path)
                }
                logger.info("worker \(name) removed", metadata: ["worker": "\(name)"])
            case .persist(let state):
                // In order with the requests' writes, on the blocking-work thread.
                let (store, logger) = (stateStore, logger)
                io.submit(Self.saving(state, to: store, stale: stateFileStale, applied: true), then: { error in
                    if let error { logger.error("cannot write the state file \(store.path): \(error)") }
                })
            }
        }
        resumeWaiters()
        updateStatus()
    }

    private func submitToRunner(_ action: FleetAction) {
        switch action {
        case .spawn(let name, let definition):
            spawning.insert(name)
            earlyExits[name] = nil
            earlyNotifications[name] = nil
            runner.submitStart(launchSpec(definition)) { [weak self] result in
                self?.onLoop { $0.startAnswered(name, result) }
            }
        case .stop(let name, _):
            runner.submitStop(name: name) {}
        default:
            break
        }
    }

    /// A loop timer (an event, not a poll). Re-scheduling replaces (cancels) the previous timer
    /// of the worker.
    private func schedule(_ name: String, at instant: MonotonicInstant) {
        if let old = timers.removeValue(forKey: name) { loop.cancel(old) }
        var timer: LoopTimer?
        timer = loop.schedule(at: deadline(instant)) { [weak self] in
            guard let timer else { return }
            self?.onLoop { $0.timerDue(name, timer) }
        }
        timers[name] = timer
    }

    private func deadline(_ instant: MonotonicInstant) -> UInt64 {
        clockOrigin &+ UInt64(max(instant.nanoseconds, 0))
    }

    private func scheduleRoleTimer(at instant: MonotonicInstant) {
        if let roleTimer { loop.cancel(roleTimer) }
        var timer: LoopTimer?
        timer = loop.schedule(at: deadline(instant)) { [weak self] in
            guard let timer else { return }
            self?.onLoop { $0.roleTimerDue(timer) }
        }
        roleTimer = timer
    }

    private func stateChanged(_ name: String, state: WorkerState, pid: Int32?, reason: String) {
        let now = wallClockMicroseconds()
        emitManagerSignal(BgWorkerBus.Signal.workerStateChanged, [.string(name), .string(state.rawValue), .uint32(busPid(pid)), .string(reason)])
        setWorkerProperties(name, [
            ("State", .string(state.rawValue)), ("Pid", .uint32(busPid(pid))),
            ("StateChangedAt", .uint64(now)), ("StateReason", .string(reason)),
            ("ReadyAt", .uint64(state == .running ? now : 0)),
        ])
        // After the signals: formatting the line and waking the log thread would delay them.
        var metadata: Logger.Metadata = ["worker": "\(name)", "state": "\(state.rawValue)"]
        if let pid { metadata["pid"] = "\(pid)" }
        let level: Logger.Level = state == .failed ? .error : (state == .backoff ? .warning : .info)
        logger.log(level: level, "worker \(name): \(state.rawValue) (\(reason))", metadata: metadata)
    }

    private func workerAdded(_ status: WorkerStatus) {
        let factory = BusServiceFactory(supervisor: self, access: access)
        do {
            let object = try factory.makeWorker(status, stateChangedAt: wallClockMicroseconds())
            workerObjects[status.name] = object
            if let connection { exportObject(object, on: connection) }
            logger.info("worker \(status.name) added", metadata: ["worker": "\(status.name)"])
        } catch {
            logger.error("cannot make the bus object of worker \(status.name): \(error)")
        }
    }

    private func exportObject(_ object: ExportedObject, on connection: DBusConnection) {
        do {
            try connection.export(object)
        } catch {
            logger.error("cannot export \(object.path): \(error)")
        }
    }

    private func setWorkerProperties(_ name: String, _ values: [(String, DBusValue)]) {
        guard let object = workerObjects[name] else { return }
        do {
            try object.setProperties(BgWorkerBus.workerInterface, values)
        } catch {
            logger.error("cannot update the properties of worker \(name): \(error)")
        }
    }

    private func setManagerProperty(_ property: String, _ value: DBusValue) {
        do {
            try manager?.setProperty(BgWorkerBus.managerInterface, property, value)
        } catch {
            logger.error("cannot update \(property): \(error)")
        }
    }

    private func emitManagerSignal(_ member: String, _ arguments: [DBusValue]) {
        do {
            try manager?.emitSignal(interface: BgWorkerBus.managerInterface, member: member, arguments: arguments)
        } catch {
            logger.error("cannot emit \(member): \(error)")
        }
    }

    private func applyLogLevel(_ level: LogLevel) {
        if let swiftLogLevel = Logger.Level(rawValue: level.rawValue) { logLevel.level = swiftLogLevel }
    }

    /// The worker's whole environment: a default PATH (as systemd gives services), the daemon's
    /// bus when it is not the default system bus, the configured variables, then
    /// `BGWORKER_NAME`, `BGWORKER_LOG_LEVEL` and `BGWORKER_OBJECT_PATH`.
    private func launchSpec(_ definition: WorkerDefinition) -> LaunchSpec {
        var environment = ["PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        if let address = settings.busAddressForWorkers { environment["DBUS_SYSTEM_BUS_ADDRESS"] = address }
        environment.merge(definition.environment) { _, configured in configured }
        environment["BGWORKER_NAME"] = definition.name
        // The level in force for this worker (its own, else the manager's), which it then follows
        // on its own object's EffectiveLogLevel.
        let level = fleet.status(of: definition.name)?.effectiveLogLevel ?? fleet.managerLogLevel
        environment["BGWORKER_LOG_LEVEL"] = level.rawValue
        environment["BGWORKER_OBJECT_PATH"] = BgWorkerBus.workerPath(definition.name)
        return LaunchSpec(
            name: definition.name, argv: definition.exec, environment: environment,
            workingDirectory: definition.workingDirectory, user: definition.user, group: definition.group,
            stopTimeout: .nanoseconds(Int64(min(definition.stopTimeout, 1e9) * 1e9)),
            definitionHash: definition.definitionHash, resources: definition.resources,
            credentials: credentials[definition.name], ready: definition.ready, startTimeout: definition.startTimeout,
            watchdog: definition.watchdog)
    }

    /// Every worker's `user`/`group` as ids (getpwnam_r, getgrnam_r, getgrouplist): blocking,
    /// so never called on the loop. A user or group added later is seen at the next reload.
    nonisolated static func resolveCredentials(_ configuration: Configuration) -> [String: WorkerCredentials.Resolution] {
        var resolved: [String: WorkerCredentials.Resolution] = [:]
        for worker in configuration.workers where worker.user != nil || worker.group != nil {
            resolved[worker.name] = .resolve(user: worker.user, group: worker.group, worker: worker.name)
        }
        return resolved
    }

    // MARK: - Waiting for settled workers and for the end

    /// Applies a bus request and returns once its worker is settled (see `WorkerState.isSettled`).
    /// The waiter is registered right after the request is applied, and checks the worker inside
    /// its continuation's body: the `await`s between them do not suspend (same executor, and the
    /// bus's tasks have no executor preference: ObjectDispatch.runHandler), and if one ever did,
    /// the answer to the very start this request made would be seen, not lost.
    private func applyAndWaitUntilSettled(_ event: FleetEvent, _ name: String) async throws(DBusError) {
        await enterRequestQueue()
        do {
            try await persistAndApply(event)
        } catch {
            leaveRequestQueue()
            throw error
        }
        leaveRequestQueue()
        await waitUntilSettled(name)
    }

    /// Returns once the worker is settled. The check is inside the continuation's body: between a
    /// check before it and the body, an `await` may have let the very exit or answer that settles
    /// the worker run (with a task-executor preference every hop suspends), and its wake-up would
    /// be lost.
    private func waitUntilSettled(_ name: String) async {
        await withCheckedContinuation { continuation in
            if fleet.isSettled(name) {
                continuation.resume()
            } else {
                settleWaiters[name, default: []].append(continuation)
            }
        }
    }

    private func resumeWaiters() {
        for name in Array(settleWaiters.keys) where fleet.isSettled(name) {
            settleWaiters.removeValue(forKey: name)?.forEach { $0.resume() }
        }
        if !maintenanceWaiters.isEmpty, fleet.maintenanceSettled {
            let waiters = maintenanceWaiters
            maintenanceWaiters = []
            waiters.forEach { $0.resume() }
        }
        if isShuttingDown, !fleet.hasProcesses, !drainWaiters.isEmpty {
            let waiters = drainWaiters
            drainWaiters = []
            waiters.forEach { $0.resume() }
        }
    }

    // MARK: - Status for systemd

    /// `3 workers: 2 running, 1 standby`.
    public func statusText() -> String {
        // Counted, not listed: `fleet.workers` sorts every name and builds every status (issue 15).
        let counts = fleet.stateCounts
        let total = counts.values.reduce(0, +)
        let parts = WorkerState.allCases.compactMap { state in counts[state].map { "\($0) \(state.rawValue)" } }
        let head = total == 1 ? "1 worker" : "\(total) workers"
        return parts.isEmpty ? head : head + ": " + parts.joined(separator: ", ")
    }

    /// STATUS= follows the counts, at most once per `statusInterval`: a burst of changes (1,000
    /// workers starting) sends the latest text once at the end of the interval instead of a
    /// datagram each, so NOTIFY_SOCKET is not flooded (a full one never blocks: `ServiceNotifier`).
    private func updateStatus() {
        guard statusFlush == nil else { return }  // the flush that is due sends the latest text
        let now = loop.now()
        if let last = lastStatusSentAt, now &- last < Self.statusInterval {
            statusFlush = loop.schedule(at: last &+ Self.statusInterval) { [weak self] in
                self?.onLoop { $0.flushStatus() }
            }
            return
        }
        sendStatusIfChanged()
    }

    private func flushStatus() {
        statusFlush = nil
        sendStatusIfChanged()
    }

    private func sendStatusIfChanged() {
        let text = statusText()
        guard text != lastStatusText else { return }
        lastStatusText = text
        lastStatusSentAt = loop.now()
        notifier.status(text)
    }
}


/// Microseconds since the Unix epoch (`StateChangedAt`).
func wallClockMicroseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return UInt64(max(now.tv_sec, 0)) * 1_000_000 + UInt64(max(now.tv_nsec, 0)) / 1000
}

/// A flag written on the blocking-work thread and read on the loop.
final class StaleFlag: Sendable {
    private let state = Mutex(false)
    var value: Bool {
        get { state.withLock { $0 } }
        set { state.withLock { $0 = newValue } }
    }
}
