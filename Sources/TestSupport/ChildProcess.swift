import CShims
import Foundation
import Glibc
import Synchronization

/// Errors from starting or waiting for a helper process in tests.
public struct TestProcessError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A real child process started by a test: spawned with `posix_spawn` (a clean signal mask and
/// default dispositions, unlike Foundation.Process), its own process group, optional pipes for
/// stdout and stderr, and a pidfd for waiting on its exit without polling or reaping others.
///
/// Blocking waits run on a thread of their own, so async tests never block the cooperative pool.
public final class ChildProcess: Sendable {
    public let pid: pid_t
    public let argv: [String]
    /// Whether the child leads a process group of its own (`newProcessGroup`), so `signalGroup` reaches
    /// everything it started that stayed in its group.
    public let leadsProcessGroup: Bool
    private let pidfd: Int32
    private let stdoutReader: LineReader?
    private let stderrReader: LineReader?
    private let exitStatus = Mutex<Int32?>(nil)

    /// Starts `argv[0]` (searched in PATH) with the given environment (default: ours plus `extraEnvironment`).
    /// `logFile`: where stdout and stderr go when not captured (appended), instead of the test's own
    /// output; keeps chatty helpers (keepalived -l, systemd) out of the test log yet readable on failure.
    public init(
        _ argv: [String],
        environment: [String: String]? = nil,
        extraEnvironment: [String: String] = [:],
        captureStdout: Bool = true,
        captureStderr: Bool = false,
        newProcessGroup: Bool = true,
        logFile: String? = nil
    ) throws {
        precondition(!argv.isEmpty)
        self.argv = argv
        leadsProcessGroup = newProcessGroup
        var env = environment ?? ProcessInfo.processInfo.environment
        for (k, v) in extraEnvironment { env[k] = v }

        var spawn = CleanSpawn(newProcessGroup: newProcessGroup)
        defer { spawn.destroy() }

        var outPipe: [Int32] = [-1, -1]
        var errPipe: [Int32] = [-1, -1]
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(devNull) }
        posix_spawn_file_actions_adddup2(&spawn.actions, devNull, 0)
        let logFD = logFile.map { open($0, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644) } ?? -1
        defer { if logFD >= 0 { close(logFD) } }
        if logFile != nil && logFD < 0 { throw TestProcessError("cannot open \(logFile ?? ""): \(errno)") }
        if logFD >= 0 {
            if !captureStdout { posix_spawn_file_actions_adddup2(&spawn.actions, logFD, 1) }
            if !captureStderr { posix_spawn_file_actions_adddup2(&spawn.actions, logFD, 2) }
        }
        if captureStdout {
            guard _bgw_pipe_cloexec(&outPipe) == 0 else { throw TestProcessError("pipe2: \(errno)") }
            posix_spawn_file_actions_adddup2(&spawn.actions, outPipe[1], 1)
        }
        if captureStderr {
            guard _bgw_pipe_cloexec(&errPipe) == 0 else { throw TestProcessError("pipe2: \(errno)") }
            posix_spawn_file_actions_adddup2(&spawn.actions, errPipe[1], 2)
        }

        var child: pid_t = 0
        let rc = spawn.spawn(&child, argv, environment: env.map { "\($0.key)=\($0.value)" }, searchingPath: true)
        if captureStdout { close(outPipe[1]) }
        if captureStderr { close(errPipe[1]) }
        guard rc == 0 else {
            if captureStdout { close(outPipe[0]) }
            if captureStderr { close(errPipe[0]) }
            throw TestProcessError("cannot start \(argv[0]): \(String(cString: strerror(rc)))")
        }
        pid = child
        // The child is ours and unreaped, so its pid cannot be reused before this call.
        pidfd = _bgw_pidfd_open(child, 0)
        stdoutReader = captureStdout ? LineReader(fd: outPipe[0]) : nil
        stderrReader = captureStderr ? LineReader(fd: errPipe[0]) : nil
    }

    deinit {
        if exitStatus.withLock({ $0 }) == nil {
            _ = _bgw_pidfd_send_signal(pidfd, SIGKILL)
            var status: Int32 = 0
            _ = waitpid(pid, &status, 0)
        }
        close(pidfd)
    }

    /// Sends a signal to the process (not its group).
    public func signal(_ sig: Int32) {
        if exitStatus.withLock({ $0 }) == nil { _ = _bgw_pidfd_send_signal(pidfd, sig) }
    }

    /// Sends a signal to the child's whole process group (the child and what it started in its
    /// group), e.g. to kill a daemon together with its worker children. Only for `newProcessGroup`.
    public func signalGroup(_ sig: Int32) {
        precondition(leadsProcessGroup, "\(argv[0]) was not started in a process group of its own")
        if exitStatus.withLock({ $0 }) == nil { _ = Glibc.kill(-pid, sig) }
    }

    /// Waits for the exit on the calling thread (no deadline) and reaps the child: for
    /// synchronous clean-up paths such as `deinit`. Prefer `waitForExit(timeout:)` in async code.
    @discardableResult
    public func waitBlocking() -> Int32 {
        if let s = exitStatus.withLock({ $0 }) { return s }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        exitStatus.withLock { $0 = status }
        return status
    }

    /// The next line of standard output, or nil at end of file; throws after `timeout`.
    public func readLine(timeout: Duration = .seconds(10)) async throws -> String? {
        guard let r = stdoutReader else { throw TestProcessError("stdout of \(argv[0]) is not captured") }
        return try await r.readLine(timeout: timeout, what: "a line from \(argv[0])")
    }

    /// The next line of standard error, or nil at end of file; throws after `timeout`.
    public func readErrorLine(timeout: Duration = .seconds(10)) async throws -> String? {
        guard let r = stderrReader else { throw TestProcessError("stderr of \(argv[0]) is not captured") }
        return try await r.readLine(timeout: timeout, what: "a stderr line from \(argv[0])")
    }

    /// Reads stdout lines until one satisfies `predicate`; returns it.
    public func readLine(
        until predicate: @Sendable (String) -> Bool, timeout: Duration = .seconds(10)
    ) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while true {
            let left = deadline - ContinuousClock.now
            guard let line = try await readLine(timeout: max(left, .zero)) else {
                throw TestProcessError("\(argv[0]) closed stdout before the expected line")
            }
            if predicate(line) { return line }
        }
    }

    /// Waits for the process to exit; returns its raw wait status. Throws after `timeout`.
    @discardableResult
    public func waitForExit(timeout: Duration = .seconds(10)) async throws -> Int32 {
        if let s = exitStatus.withLock({ $0 }) { return s }
        let ready = try await awaitReadable(pidfd, timeout: timeout)
        guard ready else { throw TestProcessError("\(argv[0]) (pid \(pid)) did not exit within \(timeout)") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        exitStatus.withLock { $0 = status }
        return status
    }

    /// Whether the process has exited (without reaping it).
    public var hasExited: Bool {
        if exitStatus.withLock({ $0 }) != nil { return true }
        var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) > 0
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`; reaps it.
    public func terminate(grace: Duration = .seconds(5)) async {
        guard exitStatus.withLock({ $0 }) == nil else { return }
        signal(SIGTERM)
        if (try? await waitForExit(timeout: grace)) == nil {
            signal(SIGKILL)
            _ = try? await waitForExit(timeout: .seconds(30))
        }
    }
}

/// Decoded wait status helpers.
public enum WaitStatus {
    public static func exitCode(_ status: Int32) -> Int32? {
        (status & 0x7f) == 0 ? (status >> 8) & 0xff : nil
    }
    public static func signal(_ status: Int32) -> Int32? {
        let sig = status & 0x7f
        return (sig != 0 && sig != 0x7f) ? sig : nil
    }
}

/// Runs a blocking closure on a fresh thread and resumes with its result, so blocking waits
/// never occupy a thread of Swift's cooperative pool (which has only as many threads as cores).
public func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        let thread = Thread { continuation.resume(returning: body()) }
        thread.stackSize = 1 << 20
        thread.start()
    }
}

/// Buffered line reading from a pipe with a deadline (poll), one reader at a time.
final class LineReader: Sendable {
    private let fd: Int32
    private let buffer = Mutex<[UInt8]>([])
    private let eof = Mutex<Bool>(false)

    init(fd: Int32) { self.fd = fd }
    deinit { close(fd) }

    func readLine(timeout: Duration, what: String) async throws -> String? {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let line = takeLine() { return line }
            if eof.withLock({ $0 }) {
                let rest = buffer.withLock { b -> [UInt8] in defer { b = [] }; return b }
                return rest.isEmpty ? nil : String(decoding: rest, as: UTF8.self)
            }
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw TestProcessError("timed out after \(timeout) waiting for \(what)") }
            guard try await awaitReadable(fd, timeout: left) else { continue }
            var bytes = [UInt8](repeating: 0, count: 65536)
            let n = read(fd, &bytes, bytes.count)
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            let chunk: [UInt8]? = n > 0 ? Array(bytes[0..<n]) : nil
            switch chunk {
            case nil: eof.withLock { $0 = true }
            case let bytes?: buffer.withLock { $0.append(contentsOf: bytes) }
            }
        }
    }

    private func takeLine() -> String? {
        buffer.withLock { b in
            guard let nl = b.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
            let line = String(decoding: b[..<nl], as: UTF8.self)
            b.removeSubrange(...nl)
            return line
        }
    }
}

/// A fresh, private temporary directory removed by `remove()`. Kept short so that unix socket
/// paths inside it stay under 108 bytes.
public struct TemporaryDirectory: Sendable {
    public let path: String
    public init(prefix: String = "bgw") throws {
        var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestProcessError("mkdtemp: \(errno)") }
        path = String(cString: p)
        chmod(path, 0o755)
    }
    public func remove() { try? FileManager.default.removeItem(atPath: path) }
    public func file(_ name: String) -> String { "\(path)/\(name)" }
}

/// `body`'s result, or the error `timedOut` makes once `timeout` has passed (`body` is then
/// cancelled, and must end on cancellation).
public func withDeadline<T: Sendable>(
    _ timeout: Duration, orThrow timedOut: @escaping @Sendable () -> any Error,
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: timeout)
            throw timedOut()
        }
        defer { group.cancelAll() }
        guard let result = try await group.next() else { throw CancellationError() }
        return result
    }
}

/// Waits until `condition` holds, checking each time `events` yields; throws at the deadline.
/// Use with a stream of real events (signals, state changes), never as a timed poll.
public func waitFor<S: AsyncSequence & Sendable>(
    _ what: String,
    in events: S,
    timeout: Duration = .seconds(10),
    until condition: @escaping @Sendable (S.Element) -> Bool
) async throws -> S.Element where S.Element: Sendable {
    let found = try await withDeadline(timeout, orThrow: { TestProcessError("timed out after \(timeout) waiting for \(what)") }) {
        for try await e in events where condition(e) { return Optional(e) }
        return nil
    }
    guard let found else { throw TestProcessError("the event stream ended before \(what)") }
    return found
}

/// posix_spawn's attributes and file actions for a clean child, as the process runner makes its
/// workers: an empty signal mask, every signal at its default disposition, and optionally a
/// process group of its own. Add file actions to `actions`, call `spawn`, then `destroy`.
public struct CleanSpawn {
    public var actions = posix_spawn_file_actions_t()
    public var attributes = posix_spawnattr_t()

    public init(newProcessGroup: Bool) {
        posix_spawn_file_actions_init(&actions)
        posix_spawnattr_init(&attributes)
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        posix_spawnattr_setsigmask(&attributes, &emptyMask)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        var flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)
        if newProcessGroup {
            flags |= Int32(POSIX_SPAWN_SETPGROUP)
            posix_spawnattr_setpgroup(&attributes, 0)
        }
        posix_spawnattr_setflags(&attributes, Int16(flags))
    }

    /// posix_spawn (posix_spawnp when `searchingPath`); returns its error number (0: spawned).
    public mutating func spawn(_ pid: inout pid_t, _ argv: [String], environment: [String], searchingPath: Bool = false) -> Int32 {
        let cArgv = argv.map { strdup($0) } + [nil]
        let cEnv = environment.map { strdup($0) } + [nil]
        defer {
            cArgv.forEach { free($0) }
            cEnv.forEach { free($0) }
        }
        return searchingPath ? posix_spawnp(&pid, argv[0], &actions, &attributes, cArgv, cEnv)
                             : posix_spawn(&pid, argv[0], &actions, &attributes, cArgv, cEnv)
    }

    public mutating func destroy() {
        posix_spawn_file_actions_destroy(&actions)
        posix_spawnattr_destroy(&attributes)
    }
}
