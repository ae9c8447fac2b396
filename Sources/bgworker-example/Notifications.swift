import CSystemd
import Glibc
import Synchronization

/// The worker's side of systemd's notify protocol, which bgworkerd serves to workers with
/// `ready = "notify"` or a `watchdog` (and systemd itself to the systemd runner's units): one
/// datagram of `KEY=VALUE` lines per message to `NOTIFY_SOCKET`, sent with libsystemd's
/// `sd_notify` (not `sd_notifyf`: C variadic functions cannot be called from Swift). Without
/// `NOTIFY_SOCKET` every message is a no-op, so the same binary runs anywhere.
///
/// With `--notify` (`announcing`): `READY=1` once the bus connection works (subscribed, not just
/// connected), `STATUS=` at each cycle and each change of the bus connection, `STOPPING=1` at
/// SIGTERM. A bus that never works leaves the worker not ready, saying why in its status (which
/// `bgworkerctl status` shows) until the daemon's `start-timeout` ends it: readiness means that
/// what the worker needs works. Watchdog pings do not depend on `--notify`: a program that was
/// given `WATCHDOG_USEC` must ping or be killed, whatever else it announces.
final class Notifications: FollowerEvents {
    /// `--notify`: READY=1, STATUS= and STOPPING=1 are sent.
    let announcing: Bool
    /// Half of `WATCHDOG_USEC`, when the watchdog is enabled for this process (the variable is
    /// set, and `WATCHDOG_PID` is unset or this pid: `sd_watchdog_enabled`); nil otherwise.
    let pingInterval: Duration?
    private let log: WorkerLog
    private let state = Mutex(State())

    private struct State {
        var ready = false
        var connected = false
        /// Why the bus does not work, while it does not.
        var problem: String?
        /// The last cycle done (0: none yet), for a status sent between two cycles.
        var cycle = 0
        var lastStatus = ""
        var failedSends = 0
    }

    init(announcing: Bool, log: WorkerLog) {
        self.announcing = announcing
        self.log = log
        var usec: UInt64 = 0
        if sd_watchdog_enabled(0, &usec) > 0, usec > 0 {
            // At least 1 ms apart: a WATCHDOG_USEC of a few µs would otherwise be a busy loop.
            pingInterval = max(.microseconds(usec / 2), .milliseconds(1))
        } else {
            pingInterval = nil
        }
    }

    /// Whether `NOTIFY_SOCKET` is set at all.
    static var socketGiven: Bool { getenv("NOTIFY_SOCKET") != nil }

    /// `WATCHDOG=1`, from the main loop.
    func ping() {
        send { _ in "WATCHDOG=1" }
    }

    /// A cycle of work is done.
    func cycleDone(_ cycle: Int) {
        guard announcing else { return }
        send { state in
            state.cycle = cycle
            return Self.changedStatus(&state).map { "STATUS=\($0)" }
        }
    }

    /// SIGTERM came: the worker is stopping.
    func stopping() {
        guard announcing else { return }
        send { _ in "STOPPING=1" }
    }

    func busWorks() {
        guard announcing else { return }
        let sent = send { state in
            state.connected = true
            state.problem = nil
            let becameReady = !state.ready
            state.ready = true
            // One datagram: the status that said "not ready" never outlives READY=1.
            let lines = (becameReady ? ["READY=1"] : []) + (Self.changedStatus(&state).map { ["STATUS=\($0)"] } ?? [])
            return lines.isEmpty ? nil : lines.joined(separator: "\n")
        }
        if sent.hasPrefix("READY=1") { log.info("ready: the bus connection works (READY=1 sent)") }
    }

    func busFails(_ reason: String) {
        guard announcing else { return }
        send { state in
            state.connected = false
            state.problem = reason
            return Self.changedStatus(&state).map { "STATUS=\($0)" }
        }
    }

    /// The status the state calls for, when it differs from the one last sent.
    private static func changedStatus(_ state: inout State) -> String? {
        var status = state.cycle > 0 ? "cycle \(state.cycle)" : state.connected ? "ready, no cycle yet" : "starting"
        if !state.connected {
            // One line: a newline would end the STATUS= value and start another key.
            let problem = (state.problem ?? "connecting to the bus").map { $0.isNewline ? " " : $0 }
            status += state.ready ? "; bus lost: \(String(problem))" : "; not ready: \(String(problem))"
        }
        guard status != state.lastStatus else { return nil }
        state.lastStatus = status
        return status
    }

    /// Changes the state and sends the message it calls for (none when nil), under the lock: two
    /// threads' statuses reach the socket in the order they were decided, so an older one can
    /// never outlive a newer one. Returns the message sent ("" for none).
    @discardableResult
    private func send(_ change: (inout State) -> String?) -> String {
        let (message, failure) = state.withLock { state -> (String, (result: Int32, count: Int)?) in
            guard let message = change(&state) else { return ("", nil) }
            let result = sd_notify(0, message)
            guard result < 0 else { return (message, nil) }
            state.failedSends += 1
            return (message, (result, state.failedSends))
        }
        if let failure {
            // Said once at warning level (the daemon's socket went away?), then at debug.
            log.log(failure.count == 1 ? .warning : .debug,
                    "cannot send \(message.split(separator: "\n").joined(separator: " ")) to NOTIFY_SOCKET: \(String(cString: strerror(-failure.result)))")
        }
        return message
    }
}
