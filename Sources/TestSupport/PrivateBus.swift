import CShims
import Foundation
import Glibc

/// A real `dbus-daemon` of the system type, on a socket of its own, started as a direct child
/// (no `--fork`, so no zombie is left behind). Its address is known once the daemon prints it,
/// which it does only when it listens: no sleep needed.
public final class PrivateBus: Sendable {
    public let directory: TemporaryDirectory
    public let socketPath: String
    public let address: String
    public let process: ChildProcess
    public let configPath: String

    /// Policy for tests of behaviour: everybody may own every name and send everything.
    public static let permissivePolicy = """
          <policy context="default">
            <allow user="*"/>
            <allow own="*"/>
            <allow send_type="method_call"/>
            <allow send_type="signal"/>
            <allow send_type="method_return"/>
            <allow send_type="error"/>
            <allow receive_type="method_call"/>
            <allow receive_type="signal"/>
            <allow receive_type="method_return"/>
            <allow receive_type="error"/>
          </policy>
        """

    /// The real system bus's default policy (Debian's /usr/share/dbus-1/system.conf): nobody may
    /// own a name or send a method call unless a service's policy file allows it; signals and
    /// replies pass; everyone may talk to the bus itself. Then the given policy files, included
    /// after it as the system bus includes system.d/: for tests of a project's own policy file.
    public static func systemBusPolicy(including files: [String]) -> String {
        """
          <policy context="default">
            <allow user="*"/>
            <deny own="*"/>
            <deny send_type="method_call"/>
            <allow send_type="signal"/>
            <allow send_requested_reply="true" send_type="method_return"/>
            <allow send_requested_reply="true" send_type="error"/>
            <allow receive_type="method_call"/>
            <allow receive_type="method_return"/>
            <allow receive_type="error"/>
            <allow receive_type="signal"/>
            <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
            <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
            <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
            <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
                  send_member="UpdateActivationEnvironment"/>
            <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Debug.Stats"/>
          </policy>

        """ + files.map { "  <include>\($0)</include>\n" }.joined()
    }

    /// Starts a bus. `policy` replaces the permissive policy (e.g. with an `<include>` of the
    /// project's own policy file and a deny-by-default context, as the real system bus has).
    /// `socketPath` lets a restarted bus reuse the address of a previous one.
    public init(policy: String = PrivateBus.permissivePolicy, socketPath: String? = nil, directory: TemporaryDirectory? = nil) async throws {
        let dir = try directory ?? TemporaryDirectory(prefix: "bgw-bus")
        self.directory = dir
        let sock = socketPath ?? dir.file("bus.sock")
        self.socketPath = sock
        configPath = dir.file("bus-\(UUID().uuidString.prefix(8)).conf")
        let config = """
            <!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
             "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
            <busconfig>
              <type>system</type>
              <listen>unix:path=\(sock)</listen>
              <auth>EXTERNAL</auth>
              <limit name="max_replies_per_connection">50000</limit>
              <limit name="max_incoming_bytes">1000000000</limit>
              <limit name="max_outgoing_bytes">1000000000</limit>
              <limit name="max_message_size">1000000000</limit>
              <limit name="max_connections_per_user">10000</limit>
              <limit name="max_match_rules_per_connection">50000</limit>
            \(policy)
            </busconfig>
            """
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        unlink(sock)
        process = try ChildProcess(
            ["dbus-daemon", "--config-file=\(configPath)", "--nofork", "--print-address=1"],
            captureStdout: true, captureStderr: false, logFile: dir.file("dbus-daemon.log"))
        guard let line = try await process.readLine(timeout: .seconds(20)), !line.isEmpty else {
            throw TestProcessError("dbus-daemon printed no address")
        }
        address = line.trimmingCharacters(in: .whitespaces)
        // Let non-root test users (setpriv) reach the socket.
        chmod(sock, 0o777)
    }

    /// `unix:path=...` form of the address, as busctl and gdbus want it.
    public var unixAddress: String { "unix:path=\(socketPath)" }

    /// Kills the bus daemon (SIGKILL by default) and reaps it.
    public func kill(signal: Int32 = SIGKILL) async {
        process.signal(signal)
        _ = try? await process.waitForExit(timeout: .seconds(10))
    }

    /// Stops the bus and removes its directory.
    public func stop() async {
        await kill(signal: SIGTERM)
        directory.remove()
    }
}

/// Finds a program in PATH (or nil), so tests can skip with a clear message when a real client
/// is missing outside CI.
public func which(_ program: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for dir in path.split(separator: ":") {
        let candidate = "\(dir)/\(program)"
        if access(candidate, X_OK) == 0 { return candidate }
    }
    return nil
}

/// The root of the repository that holds `file` (the nearest folder above it with a
/// Package.swift), so tests can read the project's shipped files (dbus/, config/).
public func repositoryRoot(file: String = #filePath) -> String {
    var dir = (file as NSString).deletingLastPathComponent
    while dir != "/" && !FileManager.default.fileExists(atPath: "\(dir)/Package.swift") {
        dir = (dir as NSString).deletingLastPathComponent
    }
    return dir
}

/// True when running in CI (`CI=true`): tests that would skip elsewhere must run.
public var isCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }

/// True when the process runs as root.
public var isRoot: Bool { geteuid() == 0 }

/// Runs a command to completion and returns (exit status, stdout, stderr). For short-lived
/// real clients (busctl, gdbus, dbus-send, python3).
public func run(
    _ argv: [String], environment: [String: String] = [:], timeout: Duration = .seconds(30)
) async throws -> (status: Int32, stdout: String, stderr: String) {
    let p = try ChildProcess(argv, extraEnvironment: environment, captureStdout: true, captureStderr: true)
    async let out = collect { try await p.readLine(timeout: timeout) }
    async let err = collect { try await p.readErrorLine(timeout: timeout) }
    let (o, e) = try await (out, err)
    let status = try await p.waitForExit(timeout: timeout)
    return (WaitStatus.exitCode(status) ?? 128 + (WaitStatus.signal(status) ?? 0), o, e)
}

private func collect(_ next: () async throws -> String?) async throws -> String {
    var lines: [String] = []
    while let l = try await next() { lines.append(l) }
    return lines.joined(separator: "\n")
}
