// The Supervisor in-process: on its event loop with a manual clock, with a fake runner standing
// for the OS (FakeRunner.swift), and no bus (its objects are made but not exported). The test
// decides when each start is answered and each process exits, and reads back one log, in the
// loop's order, of every spawn, stop, answer, exit and reply. The real runners and the daemon on
// a real bus are tested elsewhere (ProcessRunnerTests, Daemon*Tests).
import BgWorkerCore
import DBus
import Dispatch
import Foundation
import Logging
import TestSupport
import Testing

@testable import BgWorkerDaemon

/// A request as the bus service makes it.
enum Request: Sendable, CustomStringConvertible {
    case enable(String), disable(String), restart(String), stop(String), start(String), setHARole(String), reload

    var description: String {
        switch self {
        case .enable(let name): "enable \(name)"
        case .disable(let name): "disable \(name)"
        case .restart(let name): "restart \(name)"
        case .stop(let name): "stop \(name)"
        case .start(let name): "start \(name)"
        case .setHARole(let role): "SetHARole \(role)"
        case .reload: "reload"
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
            case .reload: try await reloadForBus()
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
        let directory = try TemporaryDirectory(prefix: "bgw-sup")
        var configuration = Configuration(ha: ha, workers: workers)
        configuration.daemon.stateDirectory = directory.path
        try self.init(configuration, directory: directory, io: io)
    }

    /// With the configuration of a file (`text` after a `[daemon]` table naming the state
    /// directory), which `rewrite` changes for a reload.
    init(file text: String) throws {
        let directory = try TemporaryDirectory(prefix: "bgw-sup")
        try Self.write(text, in: directory)
        let loaded = ConfigurationLoader(mainPath: directory.file("bgworkerd.toml")).load(validatingFor: .process)
        try self.init(loaded.get(), directory: directory, io: nil)
    }

    private init(_ configuration: Configuration, directory: TemporaryDirectory, io: BlockingWork?) throws {
        self.directory = directory
        self.io = try io ?? BlockingWork(name: "sup-test-io")
        loop = try EventLoop(name: "sup-test", manualClock: true)
        runner = FakeRunner(loop: loop)
        let (logger, log) = CapturedLog.make()
        self.log = log
        let settings = SupervisorSettings(
            loader: ConfigurationLoader(mainPath: directory.file("bgworkerd.toml")), runnerKind: .process,
            busAddressForWorkers: nil, version: "test")
        supervisor = try Supervisor(
            configuration: configuration, runner: runner, settings: settings, logger: logger,
            logLevel: LogLevelControl(.trace), blockingWork: self.io)
    }

    private static func write(_ text: String, in directory: TemporaryDirectory) throws {
        try "[daemon]\nstate-directory = \"\(directory.path)\"\n\n\(text)"
            .write(toFile: directory.file("bgworkerd.toml"), atomically: true, encoding: .utf8)
    }

    /// Replaces the configuration file (a reload reads it).
    func rewrite(_ text: String) throws { try Self.write(text, in: directory) }

    /// Starts the supervisor, answering the first start of each of `answering` (in that order).
    func start(answering names: [String] = []) async throws {
        try await supervisor.prepare()
        let started = Task { await supervisor.start() }
        for name in names {
            try await runner.waitForSpawn(name)
            runner.answerStart(name)
        }
        try await done(started, "the start")
        check()
    }

    /// Waits (with a deadline: a hung call fails the test instead of hanging it) for `task`.
    func done(_ task: Task<Void, Never>, _ what: String) async throws {
        let finished = WatchedValue(false)
        Task {
            await task.value
            finished.update { $0 = true }
        }
        try await finished.wait(what) { $0 }
    }

    func request(_ request: Request) -> Task<Void, Never> {
        Task { await supervisor.call(request, log: runner) }
    }

    /// Returns once what the test handed to the loop before (answers, exits, clock moves) has
    /// been carried out, with what each of those steps did at once (spawns, stops, timers). Not
    /// the calls a step resumed: a resumed task comes back to the loop through the global
    /// executor, so tests wait for a call's `returned` step instead.
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

    /// Never two live processes of one worker (the runner checks it at every spawn).
    func check(sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(runner.violations.value == [], sourceLocation: sourceLocation)
    }

    /// `check`, and the supervisor's view matches the runner's (`viewProblems`).
    func checkViews(sourceLocation: SourceLocation = #_sourceLocation) async {
        check(sourceLocation: sourceLocation)
        let problems = await viewProblems()
        #expect(problems == [], sourceLocation: sourceLocation)
    }

    /// Where the supervisor's view and the runner's differ: a pid shown that is not the one live
    /// process, or more than one live process.
    func viewProblems() async -> [String] {
        var problems: [String] = []
        for status in await supervisor.workerList() {
            let live = runner.livePids(status.name)
            if live.count > 1 { problems.append("\(status.name): live \(live)") }
            if let pid = status.pid, live != [pid] {
                problems.append("\(status.name) is \(status.state.rawValue) with pid \(pid), live: \(live)")
            }
            if status.state == .running, status.pid == nil { problems.append("\(status.name) running without a pid") }
        }
        return problems
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
        try await rig.done(started, "started")  // the first start was answered, though its process is gone already
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
        try await rig.done(started, "started")
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
        try await rig.done(enable, "enable")
        try await rig.done(disable, "disable")
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
        try await rig.done(started, "started")
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
        try await rig.done(call, "call")
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
        try await rig.done(call, "call")
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
        try await rig.done(call, "call")
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
        try await rig.done(call, "call")
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
        try await rig.done(stop, "stop")
        #expect(rig.steps(since: mark) == [.stop("w", pid: pid), .exited("w", pid: pid, .killed(15)), .returned("stop w")])
        #expect(await rig.status("w")?.state == .stopped)

        mark = rig.mark
        let start = rig.request(.start("w"))
        let new = try await rig.runner.waitForSpawn("w", count: 2)
        await rig.barrier()
        #expect(rig.steps(since: mark) == [.spawn("w", pid: new)], "Start returned before its start was answered")
        rig.runner.answerStart("w")
        try await rig.done(start, "start")
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
        try await rig.done(rig.request(.setHARole("primary")), ".setHARole(primary)")
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
        try await rig.done(secondary, "secondary")
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
        try await rig.done(rig.request(.setHARole("primary")), ".setHARole(primary)")
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
        try await rig.done(secondary, "secondary")
        try await rig.done(primary, "primary")
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
        try await rig.done(rig.request(intent), "intent")  // settled at once: no process
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
        try await rig.done(call, "call")
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
        try await rig.done(rig.request(.setHARole("primary")), ".setHARole(primary)")
        try await rig.runner.waitForSpawn("p")
        rig.runner.answerStart("p")
        rig.runner.exit("p")
        await rig.barrier()
        #expect(await rig.status("p")?.state == .backoff)
        try await rig.done(rig.request(.setHARole("secondary")), ".setHARole(secondary)")
        #expect(await rig.status("p")?.state == .standby)
        await rig.advance(by: 10 * second)
        #expect(rig.runner.livePids("p") == [])
        try await rig.done(rig.request(.setHARole("primary")), ".setHARole(primary)")
        try await rig.runner.waitForSpawn("p", count: 2)
        rig.runner.answerStart("p")
        let mark = rig.mark
        await rig.advance(by: 10 * second)
        #expect(rig.steps(since: mark).filter { if case .spawn = $0 { true } else { false } } == [])
        await rig.checkViews()
        rig.finish()
    }

    // MARK: - Shutdown and the lease

    /// Shutdown while a start is in flight: it returns only once that process, stopped when its
    /// pid is known, is gone.
    @Test func shutdownDuringAStartReturnsOnceTheProcessIsGone() async throws {
        let rig = try Rig([worker("w"), worker("x")])
        try await rig.start(answering: ["w", "x"])
        let running = try #require(await rig.status("x")?.pid)
        rig.runner.exit("w")  // w restarts at once: a start in flight
        let starting = try await rig.runner.waitForSpawn("w", count: 2)
        let down = WatchedValue(false)
        Task {
            await rig.supervisor.shutdown()
            down.update { $0 = true }
        }
        try await rig.waitFor(.stop("x", pid: running))
        try await rig.waitForState("w", .stopping)
        rig.runner.exit("x", .killed(15))
        try await rig.waitForState("x", .standby)
        await rig.barrier()
        #expect(down.value == false, "shutdown returned with a start in flight")
        rig.runner.answerStart("w")
        try await rig.waitFor(.stop("w", pid: starting))
        await rig.barrier()
        #expect(down.value == false, "shutdown returned before the last process was gone")
        rig.runner.exit("w", .killed(15))
        try await down.wait("the shutdown") { $0 }
        #expect(rig.runner.liveWorkers() == [])
        await rig.checkViews()
        rig.finish()
    }

    /// With source `pacemaker`, a role lasts its lease (30 s) unless set again: the worker of the
    /// role stops exactly when the lease ends, and a renewal moves that end.
    @Test func theLeaseEndsToTheNanosecondAndARenewalMovesIt() async throws {
        let rig = try Rig([worker("p", runOn: .primary)], ha: HASettings(source: .pacemaker, lease: 30))
        try await rig.start()
        try await rig.done(rig.request(.setHARole("primary")), ".setHARole(primary)")
        let pid = try await rig.runner.waitForSpawn("p")
        rig.runner.answerStart("p")
        await rig.advance(by: 20 * second)
        try await rig.done(rig.request(.setHARole("primary")), ".setHARole(primary)")  // renewed: the lease now ends at 50 s
        await rig.advance(by: 30 * second - 1)
        #expect(await rig.status("p")?.state == .running, "the lease ended before 30 s after its renewal")
        #expect(!rig.runner.steps.value.contains(.stop("p", pid: pid)))
        await rig.advance(by: 1)
        try await rig.waitFor(.stop("p", pid: pid))
        #expect(await rig.status("p")?.state == .stopping)
        rig.runner.exit("p", .killed(15))
        try await rig.waitForState("p", .standby)
        await rig.checkViews()
        rig.finish()
    }

    // MARK: - Random events

    /// Random requests, role changes, reloads, answers, failed starts, exits and clock moves, from a seed;
    /// after every step the invariants hold, and at the end (every start answered, shutdown)
    /// every call has returned and no process is left.
    @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8] as [UInt64])
    func randomEventsKeepOneProcessPerWorkerAndEveryCallReturns(seed: UInt64) async throws {
        // Reloads change a's program and take c out and in again.
        func configuration(program: String, withC: Bool) -> String {
            var text = """
                [ha]
                source = "pacemaker"
                lease = 30

                [worker.a]
                exec = ["\(program)"]
                run-on = "any"
                restart-delay = 0
                start-limit-burst = 0

                [worker.b]
                exec = ["/bin/true"]
                run-on = "primary"
                restart-delay = 1

                """
            if withC {
                text += """

                    [worker.c]
                    exec = ["/bin/true"]
                    enabled = false
                    run-on = "secondary"
                    restart-delay = 0.5
                    start-limit-burst = 4

                    """
            }
            return text
        }
        let rig = try Rig(file: configuration(program: "/bin/true", withC: true))
        try await rig.start(answering: ["a"])
        var random = SeededRandom(seed: seed)
        let names = ["a", "b", "c"]
        var issued = 0
        var history: [String] = []
        for _ in 0..<500 {
            let name = names[random.below(names.count)]
            switch random.below(10) {
            case 0, 1:
                let requests: [Request] = [.enable(name), .disable(name), .restart(name), .stop(name), .start(name)]
                let request = requests[random.below(requests.count)]
                history.append("\(request)")
                _ = rig.request(request)
                issued += 1
            case 2 where random.below(4) == 0:
                let (program, withC) = (["/bin/true", "/bin/false"][random.below(2)], random.below(2) == 0)
                history.append("reload \(program) \(withC ? "with" : "without") c")
                try rig.rewrite(configuration(program: program, withC: withC))
                _ = rig.request(.reload)
                issued += 1
            case 2:
                let role = ["primary", "secondary", "unknown"][random.below(3)]
                history.append("SetHARole \(role)")
                _ = rig.request(.setHARole(role))
                issued += 1
            case 3, 4:
                guard let waiting = rig.runner.unansweredStarts().first(where: { $0 == name }) else { continue }
                history.append("answer \(waiting)")
                rig.runner.answerStart(waiting)
            case 5:
                guard let waiting = rig.runner.unansweredStarts().first(where: { $0 == name }) else { continue }
                history.append("fail \(waiting)")
                rig.runner.failStart(waiting)
            case 6, 7:
                guard rig.runner.liveWorkers().contains(name) else { continue }
                let status: WorkerExit = [.exited(0), .exited(1), .killed(9)][random.below(3)]
                history.append("exit \(name) \(status)")
                rig.runner.exit(name, status)
            default:
                let nanoseconds = UInt64(random.below(25)) * 100_000_000 + UInt64(random.below(2))
                history.append("advance \(nanoseconds)")
                rig.loop.advanceClock(by: nanoseconds)
            }
            await rig.barrier()
            let problems = rig.runner.violations.value + (await rig.viewProblems())
            guard problems.isEmpty else {
                Issue.record("seed \(seed), after \(history.suffix(12)): \(problems)\nsteps: \(rig.runner.steps.value.suffix(20))")
                rig.finish()
                return
            }
        }
        // The end: every start answers itself and every stop ends its process; shut down.
        rig.runner.becomeAutomatic()
        let down = WatchedValue(false)
        Task {
            await rig.supervisor.shutdown()
            down.update { $0 = true }
        }
        do {
            try await down.wait("the shutdown") { $0 }
        } catch {
            Issue.record("seed \(seed): \(error); workers \(await rig.supervisor.workerList().map { "\($0.name) \($0.state) \($0.pid.map(String.init) ?? "-")" }); live \(rig.runner.liveWorkers()), unanswered \(rig.runner.unansweredStarts()); history \(history.suffix(15)); steps \(rig.runner.steps.value.suffix(25)); log \(rig.log.value.suffix(12).map(\.message))")
            rig.finish()
            return
        }
        #expect(rig.runner.liveWorkers() == [], "seed \(seed)")
        let calls = issued
        try await rig.runner.steps.wait("every call's return (\(calls))") { steps in
            steps.count { if case .returned = $0 { true } else if case .failed = $0 { true } else { false } } >= calls
        }
        #expect(rig.runner.steps.value.count { if case .returned = $0 { true } else if case .failed = $0 { true } else { false } } == issued)
        rig.finish()
    }

    // MARK: - Reload

    /// A reload changes the program of a worker whose start is in flight: it is stopped once its
    /// pid is known, and the new program starts once it is gone.
    @Test func aReloadThatChangesAStartingWorkerRestartsItOnceItsPidIsKnown() async throws {
        let rig = try Rig(file: "[worker.w]\nexec = [\"/bin/true\"]\nrestart-delay = 0\n")
        let started = Task { await rig.supervisor.start() }
        let old = try await rig.runner.waitForSpawn("w")
        try rig.rewrite("[worker.w]\nexec = [\"/bin/false\"]\nrestart-delay = 0\n")
        try await rig.done(rig.request(.reload), ".reload")
        #expect(rig.steps(since: 0) == [.spawn("w", pid: old), .returned("reload")])
        #expect(await rig.status("w")?.state == .stopping)
        rig.runner.answerStart("w")
        try await rig.done(started, "started")
        try await rig.waitFor(.stop("w", pid: old))
        rig.runner.exit("w", .killed(15))
        let new = try await rig.runner.waitForSpawn("w", count: 2)
        #expect(rig.runner.spec(of: old)?.argv == ["/bin/true"])
        #expect(rig.runner.spec(of: new)?.argv == ["/bin/false"])
        rig.runner.answerStart("w")
        await rig.barrier()
        #expect(await rig.status("w")?.state == .running)
        await rig.checkViews()
        rig.finish()
    }

    /// A reload removes a worker whose start is in flight: it goes once its process is gone, and
    /// a Disable waiting for it returns then.
    @Test func aWorkerRemovedDuringItsStartGoesOnceItsProcessIsGone() async throws {
        let rig = try Rig(file: "[worker.w]\nexec = [\"/bin/true\"]\nenabled = false\n\n[worker.x]\nexec = [\"/bin/true\"]\n")
        try await rig.start(answering: ["x"])
        let enable = rig.request(.enable("w"))
        let pid = try await rig.runner.waitForSpawn("w")
        try rig.rewrite("[worker.x]\nexec = [\"/bin/true\"]\n")
        try await rig.done(rig.request(.reload), ".reload")
        #expect(await rig.status("w")?.state == .stopping)
        rig.runner.answerStart("w")
        try await rig.waitFor(.stop("w", pid: pid))
        await rig.barrier()
        #expect(!rig.runner.steps.value.contains(.returned("enable w")))
        rig.runner.exit("w", .killed(15))
        try await rig.done(enable, "enable")
        #expect(await rig.status("w") == nil)
        try await rig.done(rig.request(.enable("w")), ".enable(w)")
        #expect(rig.runner.steps.value.last.map { if case .failed("enable w", _) = $0 { true } else { false } } == true)
        await rig.checkViews()
        rig.finish()
    }

    /// A reload removes a worker in its restart delay: the delay's expiry starts nothing.
    @Test func aWorkerRemovedInItsRestartDelayNeverStartsAgain() async throws {
        let rig = try Rig(file: "[worker.w]\nexec = [\"/bin/true\"]\nrestart-delay = 2\n")
        try await rig.start(answering: ["w"])
        rig.runner.exit("w")
        await rig.barrier()
        #expect(await rig.status("w")?.state == .backoff)
        try rig.rewrite("")
        try await rig.done(rig.request(.reload), ".reload")
        #expect(await rig.status("w") == nil)
        let mark = rig.mark
        await rig.advance(by: 10 * second)
        #expect(rig.steps(since: mark) == [])
        rig.finish()
    }
}
