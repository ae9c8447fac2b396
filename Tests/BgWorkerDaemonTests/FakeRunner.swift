// A runner that stands for the OS in the supervisor's in-process tests (SupervisorTests): the test
// decides when a start is answered, when a process exits and how, and every spawn, stop, answer,
// exit and reply is logged in the order the loop saw it. The real runners are tested against the
// OS in ProcessRunnerTests and SystemdRunnerTests.
import BgWorkerCore
import Synchronization
import TestSupport

@testable import BgWorkerDaemon

/// One thing that happened, as the loop thread saw it.
enum RunnerStep: Sendable, Hashable, CustomStringConvertible {
    /// The supervisor asked for a start; the process exists from here (the process runner spawns
    /// at once) with this pid.
    case spawn(String, pid: Int32)
    case answered(String, pid: Int32)
    case startFailed(String)
    /// The supervisor asked for a stop; `pid`: the live process it reaches, nil when none runs.
    case stop(String, pid: Int32?)
    case exited(String, pid: Int32, WorkerExit)
    /// A request of the supervisor returned (`enable w`, `SetHARole secondary`...), or failed.
    case returned(String)
    case failed(String, String)

    var description: String {
        switch self {
        case .spawn(let name, let pid): "spawn \(name) \(pid)"
        case .answered(let name, let pid): "answered \(name) \(pid)"
        case .startFailed(let name): "start failed \(name)"
        case .stop(let name, let pid): "stop \(name) \(pid.map(String.init) ?? "-")"
        case .exited(let name, let pid, let status): "exited \(name) \(pid) (\(status))"
        case .returned(let what): "returned \(what)"
        case .failed(let what, let error): "failed \(what): \(error)"
        }
    }
}

final class FakeRunner: WorkerRunner {
    private struct Process {
        let pid: Int32
        let spec: LaunchSpec
        var answer: (@Sendable (Result<Int32, RunnerError>) -> Void)?
        var alive = true
        /// A stop reached it (it ends when the test says, or at once once automatic).
        var stopped = false
    }
    private struct State {
        var handler: EventHandler?
        /// Every process ever spawned, by worker, oldest first.
        var processes: [String: [Process]] = [:]
        var nextPid: Int32 = 1000
        /// Starts answer themselves and stops end their process (draining at the end of a test).
        var automatic = false
    }

    let kind = "fake"
    let loop: EventLoop
    /// Every step, in the loop's order; tests wait on it.
    let steps = WatchedValue<[RunnerStep]>([])
    /// The requests made to the supervisor (SupervisorTests' `Supervisor.call`), as each entered
    /// it: not the runner's business, but noted on the same thread.
    let callsMade = WatchedValue<[String]>([])
    /// Broken invariants (two live processes of one worker...), in the order found.
    let violations = WatchedValue<[String]>([])
    private let state = Mutex(State())

    init(loop: EventLoop) { self.loop = loop }

    func note(_ step: RunnerStep) {
        loop.preconditionOnLoopThread("(FakeRunner.note)")
        steps.update { $0.append(step) }
    }

    // MARK: - WorkerRunner (called by the supervisor, on the loop thread)

    func setEventHandler(_ handler: @escaping @Sendable (RunnerEvent) -> Void, ended: @escaping @Sendable () -> Void) {
        state.withLock { $0.handler = EventHandler(deliver: handler) }
    }

    func submitStart(_ spec: LaunchSpec, answer: @escaping @Sendable (Result<Int32, RunnerError>) -> Void) {
        loop.preconditionOnLoopThread("(submitStart)")
        let (pid, live) = state.withLock { state -> (Int32, [Int32]) in
            let live = state.processes[spec.name, default: []].filter(\.alive).map(\.pid)
            state.nextPid += 1
            state.processes[spec.name, default: []].append(Process(pid: state.nextPid, spec: spec, answer: answer))
            return (state.nextPid, live)
        }
        if !live.isEmpty {
            violations.update { $0.append("two live processes of \(spec.name): \(live) and \(pid)") }
        }
        note(.spawn(spec.name, pid: pid))
        if state.withLock({ $0.automatic }) { answerStart(spec.name) }
    }

    func submitStop(name: String, done: @escaping @Sendable () -> Void) {
        loop.preconditionOnLoopThread("(submitStop)")
        let pid = state.withLock { state -> Int32? in
            guard let index = state.processes[name]?.lastIndex(where: \.alive) else { return nil }
            state.processes[name]?[index].stopped = true
            return state.processes[name]?[index].pid
        }
        note(.stop(name, pid: pid))
        loop.execute(done)
        if pid != nil, state.withLock({ $0.automatic }) { exit(name, .killed(15)) }
    }

    func adopt(_ specs: [LaunchSpec]) async -> [String: Int32] { [:] }

    func shutdown() async {}

    // MARK: - The test's side (any thread): each step is a loop job, after what is queued

    /// Answers the oldest unanswered start of `name` with its pid.
    func answerStart(_ name: String) {
        loop.execute { [self] in
            guard let (pid, answer) = takeAnswer(name) else { return missing("an unanswered start of \(name)") }
            note(.answered(name, pid: pid))
            answer(.success(pid))
        }
    }

    /// The oldest unanswered start of `name` fails (no process was made).
    func failStart(_ name: String, context: String = "execve /bin/fake") {
        loop.execute { [self] in
            guard let (pid, answer) = takeAnswer(name) else { return missing("an unanswered start of \(name)") }
            state.withLock { state in
                if let index = state.processes[name]?.firstIndex(where: { $0.pid == pid }) {
                    state.processes[name]?[index].alive = false
                }
            }
            note(.startFailed(name))
            answer(.failure(RunnerError(.spawnFailed, worker: name, context: context, errno: 2)))
        }
    }

    /// The live process of `name` ends (whether its start was answered or not).
    func exit(_ name: String, _ status: WorkerExit = .exited(1)) {
        loop.execute { [self] in
            let found = state.withLock { state -> (Int32, EventHandler?)? in
                guard let index = state.processes[name]?.lastIndex(where: \.alive) else { return nil }
                state.processes[name]?[index].alive = false
                return (state.processes[name]![index].pid, state.handler)
            }
            guard let (pid, handler) = found else { return missing("a live process of \(name)") }
            note(.exited(name, pid: pid, status))
            handler?.deliver(.exited(name: name, pid: pid, status: status))
        }
    }

    /// From now on starts answer themselves and stops end their process at once; the starts
    /// waiting for an answer are answered, and the processes a stop reached end.
    func becomeAutomatic() {
        loop.execute { [self] in
            let (waiting, stopped) = state.withLock { state -> ([String], [String]) in
                state.automatic = true
                return (
                    state.processes.flatMap { name, processes in processes.filter { $0.answer != nil }.map { _ in name } },
                    state.processes.filter { $0.value.contains { $0.alive && $0.stopped } }.map(\.key))
            }
            for name in waiting { answerStart(name) }
            for name in stopped { exit(name, .killed(15)) }
        }
    }

    /// Hands `event` to the supervisor as is (a stale or unknown pid, as a confused runner would).
    func report(_ event: RunnerEvent) {
        loop.execute { [self] in state.withLock { $0.handler }?.deliver(event) }
    }

    private func takeAnswer(_ name: String) -> (Int32, @Sendable (Result<Int32, RunnerError>) -> Void)? {
        state.withLock { state in
            guard let index = state.processes[name]?.firstIndex(where: { $0.answer != nil }),
                  let process = state.processes[name]?[index], let answer = process.answer
            else { return nil }
            state.processes[name]?[index].answer = nil
            return (process.pid, answer)
        }
    }

    private func missing(_ what: String) {
        violations.update { $0.append("the test asked for \(what), and there is none") }
    }

    // MARK: - Reading

    /// What the process `pid` was started with.
    func spec(of pid: Int32) -> LaunchSpec? {
        state.withLock { state in state.processes.values.joined().first { $0.pid == pid }?.spec }
    }

    /// Workers with a start not answered yet, one entry per start.
    func unansweredStarts() -> [String] {
        state.withLock { state in
            state.processes.flatMap { name, processes in processes.filter { $0.answer != nil }.map { _ in name } }.sorted()
        }
    }

    /// Workers with a live process.
    func liveWorkers() -> [String] {
        state.withLock { state in state.processes.filter { $0.value.contains(where: \.alive) }.map(\.key).sorted() }
    }

    /// The pids of `name`'s processes that are alive.
    func livePids(_ name: String) -> [Int32] {
        state.withLock { $0.processes[name, default: []].filter(\.alive).map(\.pid) }
    }

    /// Waits until a step satisfying `matches` has been logged; returns it.
    @discardableResult
    func waitFor(_ what: String, _ matches: @escaping @Sendable (RunnerStep) -> Bool) async throws -> RunnerStep {
        let steps = try await self.steps.wait(what) { $0.contains(where: matches) }
        return steps.first(where: matches)!
    }

    /// Waits for the `count`-th spawn of `name`; returns its pid.
    @discardableResult
    func waitForSpawn(_ name: String, count: Int = 1) async throws -> Int32 {
        let steps = try await self.steps.wait("spawn #\(count) of \(name)") { steps in
            steps.count { if case .spawn(name, _) = $0 { true } else { false } } >= count
        }
        let pids = steps.compactMap { step -> Int32? in if case .spawn(name, let pid) = step { pid } else { nil } }
        return pids[count - 1]
    }
}
