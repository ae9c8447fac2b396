// Whether the systemd runner can be used here, for `--runner auto` and `--runner systemd`.

import DBus
import Glibc
import Logging

/// The outcome of looking for a systemd that can run workers.
public enum SystemdDetection: Sendable {
    /// systemd answered; `runner` is ready, on `connection`: the daemon's own when it was passed
    /// and serves on the system bus, else one of the runner's own (`ownConnection`), which the
    /// runner replaces when it ends and closes at `shutdown`.
    case available(SystemdRunner, connection: DBusConnection, ownConnection: Bool, reason: String)
    /// Why not, in a short text for the log ("/proc/1/comm is 'init', not systemd").
    case unavailable(reason: String)
}

extension SystemdRunner {
    /// Looks for systemd as the system's manager:
    /// 1. (`requirePID1`, for `auto`) PID 1 is systemd: `/proc/1/comm` reads `systemd` and
    ///    `/run/systemd/system` is a directory (what `sd_booted()` checks);
    /// 2. it answers on the system bus: its Manager's `Version` is read within `timeout`.
    ///
    /// The system bus is the daemon's own connection when the daemon serves there
    /// (`daemonBus == .system`); otherwise the runner opens a connection of its own to it.
    public static func detect(
        daemonBus: BusAddress, daemonConnection: DBusConnection?, requirePID1: Bool = true,
        timeout: Duration = .seconds(5), loop: EventLoop? = nil,
        logger: Logger = Logger(label: "bgworkerd.systemd-runner")
    ) async -> SystemdDetection {
        if requirePID1, let why = pid1IsNotSystemd() { return .unavailable(reason: why) }
        let connection: DBusConnection
        let own: Bool
        if daemonBus == .system, let daemonConnection {
            connection = daemonConnection
            own = false
        } else {
            do {
                connection = try await connectToSystemBus(timeout: timeout)
                own = true
            } catch {
                return .unavailable(reason: "cannot connect to the system bus: \(error)")
            }
        }
        do {
            let version = try await SystemdBus.readProperty(on: connection, path: SystemdBus.managerPath,
                                                            interface: SystemdBus.manager, name: "Version",
                                                            timeout: timeout)
            let text = version.stringValue ?? "\(version)"
            let reconnect: (@Sendable () async throws -> DBusConnection)? =
                own ? { @Sendable in try await SystemdRunner.connectToSystemBus(timeout: timeout) } : nil
            let runner = SystemdRunner(connection: connection, reconnect: reconnect, loop: loop, logger: logger)
            let via = own ? "a connection of its own to the system bus" : "the daemon's system bus connection"
            return .available(runner, connection: connection, ownConnection: own,
                              reason: "systemd \(text) answers on the system bus (via \(via))")
        } catch {
            if own { connection.close() }
            return .unavailable(reason: "systemd does not answer on the system bus: \(error)")
        }
    }

    static func connectToSystemBus(timeout: Duration) async throws -> DBusConnection {
        try await DBusConnection.connect(.system, timeout: timeout)
    }

    /// nil when PID 1 is systemd, else why not.
    static func pid1IsNotSystemd(procRoot: String = "/proc", runRoot: String = "/run") -> String? {
        let comm = readSmallFile("\(procRoot)/1/comm")?.trimmingSuffix("\n")
        guard comm == "systemd" else {
            return "PID 1 is \(comm.map { "'\($0)'" } ?? "unknown (\(procRoot)/1/comm unreadable)"), not systemd"
        }
        var info = stat()
        guard lstat("\(runRoot)/systemd/system", &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
            return "\(runRoot)/systemd/system does not exist: the system was not booted with systemd"
        }
        return nil
    }
}

extension SystemdBus {
    /// `Properties.Get` of one property of systemd's, its variant unwrapped.
    static func readProperty(on connection: DBusConnection, path: ObjectPath, interface: String, name: String,
                             timeout: Duration = .seconds(25)) async throws -> DBusValue {
        let reply = try await connection.call(destination: SystemdBus.name, path: path, interface: properties,
                                              member: "Get", arguments: [.string(interface), .string(name)],
                                              timeout: timeout)
        guard let value = reply.first else { throw DBusError.failed("empty reply to Get \(name)") }
        return value.unwrappingVariant
    }
}

private func readSmallFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 256)
    var count = 0
    while count < buffer.count {
        let n = buffer.withUnsafeMutableBytes { raw -> Int in
            guard let base = raw.baseAddress else { return -1 }
            return read(fd, base + count, raw.count - count)
        }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        count += n
    }
    return String(decoding: buffer[..<count], as: UTF8.self)
}

extension String {
    fileprivate func trimmingSuffix(_ suffix: String) -> String {
        hasSuffix(suffix) ? String(dropLast(suffix.count)) : self
    }
}
