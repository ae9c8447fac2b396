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

/// The runner kind `auto` stands for on this machine: systemd transient units where systemd is
/// PID 1 and reachable, else child processes.
///
/// The systemd runner has not landed yet, so `auto` means `process`. The systemd helper replaces
/// this with its check (e.g. `/run/systemd/system` exists and the system bus answers).
public func resolveRunnerKind(_ requested: RunnerKind) -> RunnerKind {
    switch requested {
    case .auto: .process
    case .process, .systemd: requested
    }
}

/// Makes the runner of a resolved kind (`process` or `systemd`).
///
/// - Parameters:
///   - runtimeDirectory: the daemon's runtime folder (systemd's `RuntimeDirectory=`, passed in
///     `$RUNTIME_DIRECTORY`; `/run/bgworker` by default): the process runner keeps its record of
///     live process groups there, to kill what a SIGKILLed daemon left behind.
///   - busAddress: the daemon's own bus (the systemd runner talks to systemd on the system bus).
public func makeRunner(
    kind: RunnerKind, runtimeDirectory: String, busAddress: String
) throws(RunnerSelectionError) -> any WorkerRunner {
    switch kind {
    case .auto, .process:
        do {
            return try ProcessRunner(processGroupFile: runtimeDirectory + "/process-groups")
        } catch {
            throw RunnerSelectionError(description: "cannot start the process runner: \(error)")
        }
    case .systemd:
        throw RunnerSelectionError(
            description: "the systemd runner is not available in this build; use --runner process")
    }
}

/// The HA source of an `[ha]` section: nil for `source = "none"` (the role is `standalone`).
/// See docs/ha.md.
public func makeRoleSource(for settings: HASettings, logger: Logger = Logger(label: "bgworkerd.ha")) -> (any HARoleSource)? {
    switch settings.source {
    case .none:
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
