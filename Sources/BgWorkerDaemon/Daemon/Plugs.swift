// The two places where other parts of the daemon plug in: which runner runs the workers, and
// which HA source reports the role. Each is one small function, so that adding a runner or a
// source changes nothing else.
import BgWorkerCore
import DBus
import Glibc
import Logging

/// Why no runner could be made.
public struct RunnerSelectionError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// The runner chosen for a requested kind, and why (for the log).
public struct RunnerChoice: Sendable {
    /// `process` or `systemd`.
    public var kind: RunnerKind
    public var reason: String
    /// The systemd runner, ready, when `kind` is `systemd`.
    let systemdRunner: SystemdRunner?

    /// Lets go of what was prepared when the runner will not be used after all (the systemd
    /// runner's bus connection).
    public func discard() async { await systemdRunner?.shutdown() }
}

/// What `requested` stands for on this machine: `auto` is the systemd runner where systemd is
/// PID 1 and answers on the system bus, else the process runner; `systemd` needs systemd to
/// answer on the system bus (else the daemon cannot start); `process` is the process runner.
/// See docs/systemd-runner.md.
public func chooseRunner(_ requested: RunnerKind, daemonBus: BusAddress, loop: EventLoop) async throws(RunnerSelectionError) -> RunnerChoice {
    if requested == .process { return RunnerChoice(kind: .process, reason: "as configured", systemdRunner: nil) }
    // The runner keeps a system bus connection of its own: the daemon's connection is made later
    // and replaced when it reconnects, which would end the runner's view of its units.
    switch await SystemdRunner.detect(daemonBus: daemonBus, daemonConnection: nil, requirePID1: requested == .auto, loop: loop) {
    case .available(let runner, _, _, let why):
        return RunnerChoice(kind: .systemd, reason: requested == .auto ? "auto: \(why)" : why, systemdRunner: runner)
    case .unavailable(let why):
        guard requested == .auto else { throw RunnerSelectionError(description: "the systemd runner cannot be used: \(why)") }
        return RunnerChoice(kind: .process, reason: "auto: \(why)", systemdRunner: nil)
    }
}

/// Makes the chosen runner.
///
/// - Parameters:
///   - runtimeDirectory: the daemon's runtime folder (systemd's `RuntimeDirectory=`, passed in
///     `$RUNTIME_DIRECTORY`; `/run/bgworker` by default): the process runner keeps its record of
///     live process groups there, to kill what a SIGKILLed daemon left behind.
public func makeRunner(_ choice: RunnerChoice, runtimeDirectory: String, loop: EventLoop) throws(RunnerSelectionError) -> any WorkerRunner {
    if let runner = choice.systemdRunner { return runner }
    do {
        // bgworkerd blocks SIGCHLD in every thread (DaemonMain.blockedSignals): the runner adopts
        // the orphans of its workers (a daemonizer's setsid'd process dies with its worker).
        return try ProcessRunner(
            loop: loop, processGroupFile: runtimeDirectory + "/process-groups", notifySocket: runtimeDirectory + "/notify",
            adoptOrphans: true)
    } catch {
        throw RunnerSelectionError(description: "cannot start the process runner: \(error)")
    }
}

/// The HA source of an `[ha]` section: nil for `source = "none"` (the role is `standalone`) and
/// `"pacemaker"` (the cluster's agent sets the role with `SetHARole`, see docs/pacemaker.md).
/// See docs/ha.md.
public func makeRoleSource(for settings: HASettings, logger: Logger = Logger(label: "bgworkerd.ha")) -> (any HARoleSource)? {
    switch settings.source {
    case .none, .pacemaker:
        return nil
    case .keepalived(let instance):
        // The configuration checked that it is an object path; should that ever not hold, the
        // role stays unknown with the reason rather than the daemon crashing.
        guard let path = try? ObjectPath(instance) else {
            return UnknownRoleSource(why: "[ha] instance '\(instance)' is not an object path")
        }
        return KeepalivedRoleSource(instance: path, logger: logger)
    case .dbus(let service):
        return HAManagerRoleSource(service: service, logger: logger)
    }
}
