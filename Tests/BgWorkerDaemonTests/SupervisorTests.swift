// The Supervisor in-process: on its event loop with a manual clock, with a fake runner standing
// for the OS (FakeRunner.swift), and no bus (its objects are made but not exported). The test
// decides when each start is answered and each process exits, and reads back one log, in the
// loop's order, of every spawn, stop, answer, exit and reply. The real runners and the daemon on
// a real bus are tested elsewhere (ProcessRunnerTests, Daemon*Tests).
import BgWorkerCore
import DBus
import Dispatch
import Logging
import TestSupport
import Testing

@testable import BgWorkerDaemon

/// A request as the bus service makes it.
enum Request: Sendable, CustomStringConvertible {
    case enable(String), disable(String), restart(String), stop(String), start(String), setHARole(String)

    var description: String {
        switch self {
        case .enable(let name): "enable \(name)"
        case .disable(let name): "disable \(name)"
        case .restart(let name): "restart \(name)"
        case .stop(let name): "stop \(name)"
        case .start(let name): "start \(name)"
        case .setHARole(let role): "SetHARole \(role)"
        }
    }
}

extension Supervisor {
    /// Makes `request` and logs its return among the runner's steps. This runs on the actor (the
    /// loop thread), as do the runner's steps, so the log says after which answer or exit exactly
    /// the call came back.
    func call(_ request: Request, log runner: FakeRunner) async {
        // The request is in (waiting its turn, or its write or its worker) once the step that
        // made this note has ended: nothing before its first wait suspends.
        runner.callsMade.update { $0.append(request.description) }
        do throws(DBusError) {
            switch request {
            case .enable(let name): try await enable(name)
            case .disable(let name): try await disable(name)
            case .restart(let name): try await restart(name)
            case .stop(let name): try await stop(name)
            case .start(let name): try await start(name)
            case .setHARole(let role): try await setHARole(role, by: "test")
            }
            runner.note(.returned(request.description))
        } catch {
            runner.note(.failed(request.description, error.description))
        }
    }

    /// Issues the requests in this order, without waiting for their answers: each one's task
    /// is made by the previous one's, on the actor, right before that one makes its call, so it
    /// can enter the supervisor only after the previous call has run to its first wait.
    func issue(_ requests: [Request], log runner: FakeRunner) {
        guard let first = requests.first else { return }
        Task {
            issue(Array(requests.dropFirst()), log: runner)
            await call(first, log: runner)
        }
    }
}

/// A worker definition for these tests (restart at once unless `delay` says otherwise).
private func worker(
    _ name: String = "w", enabled: Bool = true, delay: Double = 0, runOn: RunOn = .primary, burst: Int = 0
) -> WorkerDefinition {
    var definition = WorkerDefinition(name: name, exec: ["/bin/fake-\(name)"])
    definition.enabled = enabled
    definition.restartDelay = delay
    definition.restartDelayMax = 60
    definition.runOn = runOn
    definition.startLimitBurst = burst
    return definition
}

/// A supervisor on a loop with a manual clock, its fake runner and a state directory of its own.
private struct Rig {
    let loop: EventLoop
    let runner: FakeRunner
    let supervisor: Supervisor
    let directory: TemporaryDirectory
    let log: WatchedValue<[CapturedLog.Line]>
    let io: BlockingWork

    init(_ workers: [WorkerDefinition], ha: HASettings = HASettings(), io: BlockingWork? = nil) throws {
        self.io = try io ?? BlockingWork(name: "sup-test-io")
        loop = try EventLoop(name: "sup-test", manualClock: true)
        runner = FakeRunner(loop: loop)
        directory = try TemporaryDirectory(prefix: "bgw-sup")
        var configuration = Configuration(ha: ha, workers: workers)
        configuration.daemon.stateDirectory = directory.path
        let (logger, log) = CapturedLog.make()
        self.log = log
        let settings = SupervisorSettings(
            loader: ConfigurationLoader(mainPath: directory.file("bgworkerd.toml")), runnerKind: .process,
            busAddressForWorkers: nil, version: "test")
        supervisor = try Supervisor(
            configuration: configuration, runner: runner, settings: settings, logger: logger,
            logLevel: LogLevelControl(.trace), blockingWork: self.io)
    }

    /// Starts the supervisor, answering the first start of each of `answering` (in that order).
    func start(answering names: [String] = []) async throws {
        try await supervisor.prepare()
        let started = Task { await supervisor.start() }
        for name in names {
            try await runner.waitForSpawn(name)
            runner.answerStart(name)
        }
        await started.value
        check()
    }

    func request(_ request: Request) -> Task<Void, Never> {
        Task { await supervisor.call(request, log: runner) }
    }

    /// Returns once what the test handed to the loop before (answers, exits, clock moves) has
    /// been carried out, with all it set off on the loop.
    func barrier() async {
        _ = await supervisor.workerList()
    }

    /// Moves the manual clock, fires what is due, and returns once that is carried out.
    func advance(by nanoseconds: UInt64) async {
        loop.advanceClock(by: nanoseconds)
        await barrier()
    }

    /// Waits until the supervisor has logged the `count`-th change of `name` to `state` (its
    /// `worker w: stopping (...)` line): for changes that send nothing to the runner.
    func waitForState(_ name: String, _ state: WorkerState, count: Int = 1) async throws {
        try await log.wait("\(name) \(state.rawValue) #\(count)") { lines in
            lines.count { $0.metadata["worker"] == name && $0.metadata["state"] == state.rawValue } >= count
        }
    }

    /// Waits until the supervisor has announced `role` for the `count`-th time.
    func waitForRole(_ role: HARole, count: Int = 1) async throws {
        try await log.wait("role \(role.rawValue) #\(count)") { lines in
            lines.count { $0.message.hasPrefix("HA role ") && $0.metadata["role"] == role.rawValue } >= count
        }
    }

    /// Issues `requests` in order (`Supervisor.issue`) and returns once each has entered the
    /// supervisor and run to its first wait.
    func issue(_ requests: [Request]) async throws {
        let before = runner.callsMade.value.count
        await supervisor.issue(requests, log: runner)
        try await runner.callsMade.wait("\(requests) made") { $0.count >= before + requests.count }
        await barrier()  // the step that noted the last call has ended
    }

    /// Waits until each of `requests` has returned (or failed).
    func waitForReturns(_ requests: [Request]) async throws {
        for request in requests {
            try await runner.waitFor("\(request) returned") {
                switch $0 {
                case .returned(request.description), .failed(request.description, _): true
                default: false
                }
            }
        }
    }

    func waitFor(_ step: RunnerStep) async throws {
        try await runner.waitFor("\(step)") { $0 == step }
    }

    var mark: Int { runner.steps.value.count }

    func steps(since mark: Int) -> [RunnerStep] { Array(runner.steps.value[mark...]) }

    func status(_ name: String) async -> WorkerStatus? {
        await supervisor.workerList().first { $0.name == name }
    }

    /// The invariants, after every step: never two live processes of one worker, and the pid the
    /// supervisor shows is the runner's live process.
    func check(sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(runner.violations.value == [], sourceLocation: sourceLocation)
    }

    func checkViews(sourceLocation: SourceLocation = #_sourceLocation) async {
        check(sourceLocation: sourceLocation)
        for status in await supervisor.workerList() {
            let live = runner.livePids(status.name)
            #expect(live.count <= 1, "\(status.name): live \(live)", sourceLocation: sourceLocation)
            if let pid = status.pid {
                #expect(live == [pid], "\(status.name) shows pid \(pid), live: \(live)", sourceLocation: sourceLocation)
            }
        }
    }

    func finish() {
        check()
        loop.stop()
        directory.remove()
    }
}

private let second: UInt64 = 1_000_000_000

@Suite struct SupervisorTests {
    // MARK: - An exit before the start's answer

    @Test func anExitBeforeTheStartsAnswerIsAppliedOnceThePidIsKnown() async throws {
        let rig = try Rig([worker("w", delay: 0)])
        let started = Task { await rig.supervisor.start() }
        let pid = try await rig.runner.waitForSpawn("w")
        rig.runner.exit("w", .exited(3))
        rig.runner.answerStart("w")
        await started.value  // the first start was answered, though its process is gone already
        let respawned = try await rig.runner.waitForSpawn("w", count: 2)
        #expect(rig.steps(since: 0) == [
            .spawn("w", pid: pid), .exited("w", pid: pid, .exited(3)), .answered("w", pid: pid),
            .spawn("w", pid: respawned),
        ])
        let status = try #require(await rig.status("w"))
        #expect(status.state == .starting)
        #expect(status.restarts == 1)
        #expect(status.lastExit == .exited(3))
        await rig.checkViews()
        rig.runner.answerStart("w")
        await rig.barrier()
        #expect(await rig.status("w")?.state == .running)
        #expect(await rig.status("w")?.pid == respawned)
        await rig.checkViews()
        rig.finish()
    }

    @Test func anExitBeforeTheAnswerGoesToBackoffWithADelay() async throws {
        let rig = try Rig([worker("w", delay: 2)])
        let started = Task { await rig.supervisor.start() }
        let pid = try await rig.runner.waitForSpawn("w")
        rig.runner.exit("w")
        rig.runner.answerStart("w")
        await started.value
        await rig.barrier()
        #expect(await rig.status("w")?.state == .backoff)
        #expect(rig.steps(since: 0) == [.spawn("w", pid: pid), .exited("w", pid: pid, .exited(1)), .answered("w", pid: pid)])
        await rig.advance(by: 2 * second)
        try await rig.runner.waitForSpawn("w", count: 2)
        await rig.checkViews()
        rig.finish()
    }

    /// Disable while the start is in flight, and the process dies before the answer: the stop
    /// that follows the answer reaches nothing, the worker ends disabled, Disable returns then.
    @Test func anExitBeforeTheAnswerOfAWorkerBeingDisabled() async throws {
        let rig = try Rig([worker("w", enabled: false)])
        try await rig.start()
        let enable = rig.request(.enable("w"))
        let pid = try await rig.runner.waitForSpawn("w")
        let disable = rig.request(.disable("w"))
        try await rig.waitForState("w", .stopping)
        rig.runner.exit("w", .killed(9))
        rig.runner.answerStart("w")
        await enable.value
        await disable.value
        let steps = rig.steps(since: 0)
        #expect(Array(steps.prefix(4)) == [
            .spawn("w", pid: pid), .exited("w", pid: pid, .killed(9)), .answered("w", pid: pid), .stop("w", pid: nil),
        ])
        #expect(Set(steps.dropFirst(4)) == [.returned("enable w"), .returned("disable w")])
        #expect(await rig.status("w")?.state == .disabled)
        await rig.checkViews()
        rig.finish()
    }

    /// An exit of another pid while a start is in flight is not the new process's: ignored.
    @Test func anExitOfAnotherPidDuringAStartIsNotTakenForTheNewProcess() async throws {
        let rig = try Rig([worker("w", delay: 0)])
        let started = Task { await rig.supervisor.start() }
        let pid = try await rig.runner.waitForSpawn("w")
        // As a runner reporting a stale exit would: deliver it by hand, then answer.
        rig.runner.report(.exited(name: "w", pid: pid + 100, status: .exited(1)))
        rig.runner.answerStart("w")
        await started.value
        await rig.barrier()
        #expect(await rig.status("w")?.state == .running)
        #expect(await rig.status("w")?.pid == pid)
        await rig.checkViews()
        rig.finish()
    }

    // MARK: - Calls return when their worker settles

    @Test func enableReturnsOnceTheWorkerRuns() async throws {
        let rig = try Rig([worker("w", enabled: false)])
        try await rig.start()
        let call = rig.request(.enable("w"))
        let pid = try await rig.runner.waitForSpawn("w")
        await rig.barrier()
        #expect(rig.steps(since: 0) == [.spawn("w", pid: pid)], "Enable returned before its start was answered")
        rig.runner.answerStart("w")
        await call.value
        #expect(rig.steps(since: 0) == [.spawn("w", pid: pid), .answered("w", pid: pid), .returned("enable w")])
        #expect(await rig.status("w")?.state == .running)
        await rig.checkViews()
        rig.finish()
    }

    @Test func enableOfAWorkerThatCannotStartReturnsInBackoff() async throws {
        let rig = try Rig([worker("w", enabled: false, delay: 1)])
        try await rig.start()
        let call = rig.request(.enable("w"))
        try await rig.runner.waitForSpawn("w")
        await rig.barrier()
        #expect(!rig.runner.steps.value.contains(.returned("enable w")))
        rig.runner.failStart("w")
        await call.value
        #expect(rig.steps(since: 1) == [.startFailed("w"), .returned("enable w")])
        #expect(await rig.status("w")?.state == .backoff)
        await rig.checkViews()
        rig.finish()
    }

    @Test func disableReturnsOnceTheProcessIsGone() async throws {
        let rig = try Rig([worker("w")])
        try await rig.start(answering: ["w"])
        let mark = rig.mark
        let call = rig.request(.disable("w"))
        let pid = try #require(await rig.status("w")?.pid)
        try await rig.waitFor(.stop("w", pid: pid))
        await rig.barrier()
        #expect(rig.steps(since: mark) == [.stop("w", pid: pid)], "Disable returned before the process was gone")
        #expect(await rig.status("w")?.state == .stopping)
        rig.runner.exit("w", .killed(15))
        await call.value
        #expect(rig.steps(since: mark) == [.stop("w", pid: pid), .exited("w", pid: pid, .killed(15)), .returned("disable w")])
        #expect(await rig.status("w")?.state == .disabled)
        await rig.checkViews()
        rig.finish()
    }

    @Test func restartReturnsOnceTheNewProcessRuns() async throws {
        let rig = try Rig([worker("w")])
        try await rig.start(answering: ["w"])
        let old = try #require(await rig.status("w")?.pid)
        let mark = rig.mark
        let call = rig.request(.restart("w"))
        try await rig.waitFor(.stop("w", pid: old))
        rig.runner.exit("w", .exited(0))
        let new = try await rig.runner.waitForSpawn("w", count: 2)
        await rig.barrier()
        #expect(rig.steps(since: mark) == [.stop("w", pid: old), .exited("w", pid: old, .exited(0)), .spawn("w", pid: new)],
                "Restart returned before the new process ran")
        rig.runner.answerStart("w")
        await call.value
        #expect(Array(rig.steps(since: mark).suffix(2)) == [.answered("w", pid: new), .returned("restart w")])
        #expect(await rig.status("w")?.state == .running)
        #expect(await rig.status("w")?.restarts == 0)
        await rig.checkViews()
        rig.finish()
    }

    @Test func stopAndStartReturnWhenTheWorkerSettles() async throws {
        let rig = try Rig([worker("w")])
        try await rig.start(answering: ["w"])
        let pid = try #require(await rig.status("w")?.pid)
        var mark = rig.mark
        let stop = rig.request(.stop("w"))
        try await rig.waitFor(.stop("w", pid: pid))
        await rig.barrier()
        #expect(rig.steps(since: mark) == [.stop("w", pid: pid)], "Stop returned before the process was gone")
        rig.runner.exit("w", .killed(15))
        await stop.value
        #expect(rig.steps(since: mark) == [.stop("w", pid: pid), .exited("w", pid: pid, .killed(15)), .returned("stop w")])
        #expect(await rig.status("w")?.state == .stopped)

        mark = rig.mark
        let start = rig.request(.start("w"))
        let new = try await rig.runner.waitForSpawn("w", count: 2)
        await rig.barrier()
        #expect(rig.steps(since: mark) == [.spawn("w", pid: new)], "Start returned before its start was answered")
        rig.runner.answerStart("w")
        await start.value
        #expect(rig.steps(since: mark) == [.spawn("w", pid: new), .answered("w", pid: new), .returned("start w")])
        #expect(await rig.status("w")?.state == .running)
        await rig.checkViews()
        rig.finish()
    }

    // MARK: - Concurrent requests queue

    @Test func twoEnablesOfOneWorkerMakeOneStartAndBothReturnWhenItRuns() async throws {
        let rig = try Rig([worker("w", enabled: false)])
        try await rig.start()
        try await rig.issue([.enable("w"), .enable("w")])
        let pid = try await rig.runner.waitForSpawn("w")
        await rig.barrier()
        #expect(rig.steps(since: 0) == [.spawn("w", pid: pid)])
        rig.runner.answerStart("w")
        try await rig.runner.steps.wait("both returned") { $0.count { $0 == .returned("enable w") } == 2 }
        #expect(rig.steps(since: 0) == [
            .spawn("w", pid: pid), .answered("w", pid: pid), .returned("enable w"), .returned("enable w"),
        ])
        await rig.checkViews()
        rig.finish()
    }

    /// Enable then Disable of one worker, issued while the state file cannot be written yet (its
    /// thread is held): nothing happens before Enable's intent is written, then both apply in
    /// order (start, then stop once the start is answered) and both return once it is disabled.
    @Test func anEnableAndADisableOfOneWorkerApplyInOrder() async throws {
        let io = try BlockingWork(name: "sup-test-io")
        let rig = try Rig([worker("w", enabled: false)], io: io)
        try await rig.start()
        let gate = DispatchSemaphore(value: 0)
        io.submit({ gate.wait() }, then: { _ in })
        try await rig.issue([.enable("w"), .disable("w")])
        #expect(rig.steps(since: 0) == [], "a request was applied before its intent was written")
        gate.signal()
        let pid = try await rig.runner.waitForSpawn("w")
        try await rig.waitForState("w", .stopping)
        rig.runner.answerStart("w")
        try await rig.waitFor(.stop("w", pid: pid))
        await rig.barrier()
        #expect(!rig.runner.steps.value.contains { if case .returned = $0 { true } else { false } })
        rig.runner.exit("w", .killed(15))
        try await rig.waitForReturns([.enable("w"), .disable("w")])
        let steps = rig.steps(since: 0)
        #expect(Array(steps.prefix(4)) == [
            .spawn("w", pid: pid), .answered("w", pid: pid), .stop("w", pid: pid), .exited("w", pid: pid, .killed(15)),
        ])
        #expect(Set(steps.dropFirst(4)) == [.returned("enable w"), .returned("disable w")])
        #expect(await rig.status("w")?.state == .disabled)
        #expect(await rig.status("w")?.enabled == false)
        #expect(StateStore(directory: rig.directory.path).load().state.intents["w"]?.enabled == false)
        await rig.checkViews()
        rig.finish()
    }

    /// Disable then Enable of a running worker: the process is stopped, and started again only
    /// once it is gone; both return when the new one runs. (A Stop of another worker, queued
    /// behind them, shows when the Enable has been applied: requests apply in order.)
    @Test func aDisableAndAnEnableOfOneWorkerApplyInOrder() async throws {
        let rig = try Rig([worker("w"), worker("x")])
        try await rig.start(answering: ["w", "x"])
        let old = try #require(await rig.status("w")?.pid)
        let other = try #require(await rig.status("x")?.pid)
        let mark = rig.mark
        try await rig.issue([.disable("w"), .enable("w"), .stop("x")])
        try await rig.waitFor(.stop("x", pid: other))
        #expect(rig.steps(since: mark) == [.stop("w", pid: old), .stop("x", pid: other)])
        #expect(await rig.status("w")?.enabled == true)
        #expect(await rig.status("w")?.state == .stopping)
        await rig.checkViews()
        rig.runner.exit("w", .killed(15))
        let new = try await rig.runner.waitForSpawn("w", count: 2)
        await rig.barrier()
        #expect(!rig.runner.steps.value.contains { if case .returned = $0 { true } else { false } })
        rig.runner.answerStart("w")
        try await rig.waitForReturns([.disable("w"), .enable("w")])
        let steps = rig.steps(since: mark)
        #expect(Array(steps.prefix(5)) == [
            .stop("w", pid: old), .stop("x", pid: other), .exited("w", pid: old, .killed(15)), .spawn("w", pid: new),
            .answered("w", pid: new),
        ])
        // Both waiters are resumed in one step; each resumed task passes through the global
        // executor before it is back on the loop, so the two replies may come in either order.
        #expect(Set(steps.dropFirst(5)) == [.returned("disable w"), .returned("enable w")])
        #expect(await rig.status("w")?.state == .running)
        rig.runner.exit("x", .killed(15))
        try await rig.waitForReturns([.stop("x")])
        await rig.checkViews()
        rig.finish()
    }

    // MARK: - HA role changes during a start

    /// SetHARole secondary while the primary-only worker's start is in flight: the call returns
    /// only once that process, stopped as soon as its pid is known, is gone.
    @Test func aRoleChangeDuringAStartStopsTheWorkerOnceItsPidIsKnown() async throws {
        let rig = try Rig([worker("p", runOn: .primary)], ha: HASettings(source: .pacemaker))
        try await rig.start()
        #expect(await rig.status("p")?.state == .standby)
        await rig.request(.setHARole("primary")).value
        let pid = try await rig.runner.waitForSpawn("p")
        #expect(rig.steps(since: 0) == [.spawn("p", pid: pid), .returned("SetHARole primary")])
        let mark = rig.mark
        let secondary = rig.request(.setHARole("secondary"))
        try await rig.waitForState("p", .stopping)
        #expect(rig.steps(since: mark) == [])
        rig.runner.answerStart("p")
        try await rig.waitFor(.stop("p", pid: pid))
        await rig.barrier()
        #expect(rig.steps(since: mark) == [.answered("p", pid: pid), .stop("p", pid: pid)], "SetHARole returned early")
        rig.runner.exit("p", .killed(15))
        await secondary.value
        #expect(rig.steps(since: mark) == [
            .answered("p", pid: pid), .stop("p", pid: pid), .exited("p", pid: pid, .killed(15)), .returned("SetHARole secondary"),
        ])
        #expect(await rig.status("p")?.state == .standby)
        await rig.checkViews()
        rig.finish()
    }

    /// primary, secondary, primary again, all before the first start is answered: one process at
    /// a time; the second one starts only after the first is gone.
    @Test func roleFlappingDuringAStartNeverMakesTwoProcesses() async throws {
        let rig = try Rig([worker("p", runOn: .primary)], ha: HASettings(source: .pacemaker))
        try await rig.start()
        await rig.request(.setHARole("primary")).value
        let first = try await rig.runner.waitForSpawn("p")
        let mark = rig.mark
        let secondary = rig.request(.setHARole("secondary"))
        try await rig.waitForState("p", .stopping)
        let primary = rig.request(.setHARole("primary"))
        try await rig.waitForRole(.primary, count: 2)
        #expect(rig.steps(since: mark) == [])
        rig.runner.answerStart("p")
        try await rig.waitFor(.stop("p", pid: first))
        await rig.checkViews()
        rig.runner.exit("p", .killed(15))
        let next = try await rig.runner.waitForSpawn("p", count: 2)
        await rig.checkViews()
        rig.runner.answerStart("p")
        await secondary.value
        await primary.value
        let steps = rig.steps(since: mark)
        #expect(Array(steps.prefix(5)) == [
            .answered("p", pid: first), .stop("p", pid: first), .exited("p", pid: first, .killed(15)),
            .spawn("p", pid: next), .answered("p", pid: next),
        ])
        #expect(Set(steps.dropFirst(5)) == [.returned("SetHARole secondary"), .returned("SetHARole primary")])
        #expect(await rig.status("p")?.state == .running)
        await rig.checkViews()
        rig.finish()
    }

    // MARK: - Timers

    @Test func theRestartDelayIsHonouredToTheNanosecond() async throws {
        let rig = try Rig([worker("w", delay: 1.5)])
        try await rig.start(answering: ["w"])
        await rig.advance(by: 5 * second)
        let first = try #require(await rig.status("w")?.pid)
        rig.runner.exit("w")
        await rig.barrier()
        #expect(await rig.status("w")?.state == .backoff)
        await rig.advance(by: 1_500_000_000 - 1)
        #expect(rig.runner.livePids("w") == [], "spawned before the restart delay")
        #expect(await rig.status("w")?.state == .backoff)
        await rig.advance(by: 1)
        let respawned = try await rig.runner.waitForSpawn("w", count: 2)
        #expect(respawned != first)
        await rig.checkViews()
        // The next delay doubles (3 s), counted from the second exit.
        rig.runner.answerStart("w")
        await rig.advance(by: 1 * second)
        rig.runner.exit("w")
        await rig.advance(by: 3 * second - 1)
        #expect(rig.runner.livePids("w") == [], "spawned before the doubled restart delay")
        await rig.advance(by: 1)
        try await rig.runner.waitForSpawn("w", count: 3)
        await rig.checkViews()
        rig.finish()
    }

    @Test(arguments: [Request.disable("w"), .stop("w")])
    func aPendingRestartDelayIsCancelledByANewerIntent(_ intent: Request) async throws {
        let rig = try Rig([worker("w", delay: 2)])
        try await rig.start(answering: ["w"])
        rig.runner.exit("w")
        await rig.barrier()
        #expect(await rig.status("w")?.state == .backoff)
        let mark = rig.mark
        await rig.request(intent).value  // settled at once: no process
        #expect(rig.steps(since: mark) == [.returned(intent.description)])
        await rig.advance(by: 10 * second)
        #expect(rig.steps(since: mark) == [.returned(intent.description)], "the cancelled restart delay spawned")
        #expect(await rig.status("w")?.state == (intent.description.hasPrefix("disable") ? .disabled : .stopped))
        await rig.checkViews()
        rig.finish()
    }

    /// Restart during the delay starts at once; the old delay's expiry then starts nothing more.
    @Test func aRestartDuringTheDelayStartsOnceAndTheOldDelayNothing() async throws {
        let rig = try Rig([worker("w", delay: 2)])
        try await rig.start(answering: ["w"])
        rig.runner.exit("w")
        await rig.barrier()
        let call = rig.request(.restart("w"))
        try await rig.runner.waitForSpawn("w", count: 2)
        rig.runner.answerStart("w")
        await call.value
        let mark = rig.mark
        await rig.advance(by: 10 * second)
        #expect(rig.steps(since: mark) == [], "the cancelled restart delay spawned")
        #expect(await rig.status("w")?.state == .running)
        await rig.checkViews()
        rig.finish()
    }

    /// The role turns secondary during the delay: the worker rests; primary again starts it at
    /// once, and the old delay's expiry starts nothing more.
    @Test func aRoleChangeDuringTheDelayCancelsIt() async throws {
        let rig = try Rig([worker("p", delay: 2, runOn: .primary)], ha: HASettings(source: .pacemaker))
        try await rig.start()
        await rig.request(.setHARole("primary")).value
        try await rig.runner.waitForSpawn("p")
        rig.runner.answerStart("p")
        rig.runner.exit("p")
        await rig.barrier()
        #expect(await rig.status("p")?.state == .backoff)
        await rig.request(.setHARole("secondary")).value
        #expect(await rig.status("p")?.state == .standby)
        await rig.advance(by: 10 * second)
        #expect(rig.runner.livePids("p") == [])
        await rig.request(.setHARole("primary")).value
        try await rig.runner.waitForSpawn("p", count: 2)
        rig.runner.answerStart("p")
        let mark = rig.mark
        await rig.advance(by: 10 * second)
        #expect(rig.steps(since: mark).filter { if case .spawn = $0 { true } else { false } } == [])
        await rig.checkViews()
        rig.finish()
    }
}
