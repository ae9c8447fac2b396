import CShims
import Foundation
import Glibc
import Synchronization

/// The path of an executable product built beside the test bundle (or the benchmark), e.g.
/// `builtExecutablePath("bgworkerd")`.
public func builtExecutablePath(_ name: String) -> String {
    let me = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
    return me.deletingLastPathComponent().appendingPathComponent(name).path
}

/// A real `bgworkerd` (the built executable) run by a test on a `PrivateBus`, as a direct child in
/// a process group of its own. Readiness is its own `READY=1` on a `NotifySocket` (so no sleep and
/// no polling of the bus): by then it owns its name and has started its workers.
///
/// Its stdout and stderr (the daemon logs one line per message there when no journald runs) go
/// to `logPath`. Its runtime folder (`RUNTIME_DIRECTORY`, the process runner's record of process
/// groups) is `<directory>/run`, so that daemons of parallel tests never see each other's workers.
public final class DaemonProcess: Sendable {
    public let bus: PrivateBus
    public let configPath: String
    public let process: ChildProcess
    /// `NOTIFY_SOCKET` of the daemon: READY=1, STATUS=, RELOADING=1, STOPPING=1.
    public let notifications: NotifySocket
    public let logPath: String

    /// Starts `bgworkerd --config configPath --bus <bus> arguments...` and (by default) waits for
    /// READY=1. Throws with the daemon's log when it exits or does not get ready in time.
    /// `wrapper`: a command that execs the daemon as its own process (e.g. `prlimit ... --`).
    public init(
        bus: PrivateBus, configPath: String, arguments: [String] = [], environment: [String: String] = [:],
        runtimeDirectory: String? = nil, logPath: String? = nil,
        waitUntilReady shouldWait: Bool = true, timeout: Duration = .seconds(30), wrapper: [String] = []
    ) async throws {
        self.bus = bus
        self.configPath = configPath
        let folder = URL(fileURLWithPath: configPath).deletingLastPathComponent().path
        let log = logPath ?? "\(folder)/bgworkerd-\(uniqueID(6)).log"
        self.logPath = log
        notifications = try NotifySocket()
        var extra = environment
        extra["NOTIFY_SOCKET"] = notifications.address
        extra["RUNTIME_DIRECTORY"] = runtimeDirectory ?? "\(folder)/run"
        process = try ChildProcess(
            wrapper + [builtExecutablePath("bgworkerd"), "--config", configPath, "--bus", bus.unixAddress] + arguments,
            extraEnvironment: extra, captureStdout: false, captureStderr: false, logFile: log)
        if shouldWait {
            do {
                try await waitUntilReady(timeout: timeout)
            } catch {
                await process.terminate(grace: .seconds(2))
                throw TestProcessError("\(error)\n--- bgworkerd log ---\n\(self.log)")
            }
        }
    }

    /// The READY=1 message the daemon sent at start (with its STATUS=), once it was received.
    public var readyMessage: [(key: String, value: String)] { ready.withLock { $0 } }
    private let ready = Mutex<[(key: String, value: String)]>([])

    /// Waits for READY=1 (or for the daemon to exit, which fails at once); returns that message.
    @discardableResult
    public func waitUntilReady(timeout: Duration = .seconds(30)) async throws -> [(key: String, value: String)] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw TestProcessError("bgworkerd sent no READY=1 within \(timeout)") }
            let message: [(key: String, value: String)]
            do {
                message = try await notifications.receive(timeout: min(left, .milliseconds(500)))
            } catch {
                if process.hasExited {
                    throw TestProcessError("bgworkerd exited with status \(try await process.waitForExit()) before READY=1")
                }
                continue
            }
            if message.contains(where: { $0.key == "READY" && $0.value == "1" }) {
                ready.withLock { $0 = message }
                return message
            }
        }
    }

    /// What the daemon wrote so far.
    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Sends a signal to the daemon.
    public func signal(_ sig: Int32) { process.signal(sig) }

    /// The daemon's pid (a child of this process).
    public var pid: pid_t { process.pid }

    /// SIGTERM (by default) and waits for the exit; returns the raw wait status.
    @discardableResult
    public func stop(signal sig: Int32 = SIGTERM, timeout: Duration = .seconds(20)) async throws -> Int32 {
        process.signal(sig)
        return try await process.waitForExit(timeout: timeout)
    }

    /// `busctl --address=<bus> ARGS...`: status, stdout, stderr.
    public func busctl(_ arguments: [String], timeout: Duration = .seconds(30)) async throws -> (status: Int32, stdout: String, stderr: String) {
        try await run(["busctl", "--address=\(bus.unixAddress)"] + arguments, timeout: timeout)
    }
}
