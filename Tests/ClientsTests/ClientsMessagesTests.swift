import Foundation
import Glibc
import Testing
import TestSupport

/// Issue 12: bgworkerctl's messages an admin can act on, with the real bgworkerd and real callers.
@Suite("bgworkerctl messages", .timeLimit(.minutes(2)))
struct ClientsMessagesTests {
    static let asNobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

    @Test(.enabled(if: rootTestsEnabled, "needs root: the caller switches to nobody"))
    func theDaemonsRefusalNamesTheCommandAndTheGroup() async throws {
        // A permissive bus: the daemon itself refuses ([daemon] admin-group = "users").
        try await ClientsEndToEndTests.Setup.with({ _ in
            """
            admin-group = "users"

            [worker.dice]
            exec = ["/bin/sleep", "1000"]
            """
        }) { setup in
            chmod(setup.directory.path, 0o755)
            for (command, typed) in [(["disable", "dice"], "disable"), (["log-level", "debug"], "log-level"), (["stop", "dice"], "stop")] {
                let r = try await run(Self.asNobody + [builtExecutablePath("bgworkerctl"), "--bus", setup.bus.address] + command)
                #expect(r.status == 1)
                #expect(r.stderr == "bgworkerctl: `\(typed)` needs root or membership in group `users`", "\(r.stderr)")
            }
            #expect(try await setup.worker("dice")["state"] as? String == "running")
        }
    }

    @Test(.enabled(if: rootTestsEnabled, "needs root: the policy lets only root own the name, and the caller switches users"))
    func theBusPolicysRefusalIsOneLineNotTheRuleDump() async throws {
        let directory = try TemporaryDirectory(prefix: "bgw-msg")
        defer { directory.remove() }
        chmod(directory.path, 0o755)
        let shipped = "\(packageRoot)/dbus/org.example.BgWorker.conf"
        let bus = try await PrivateBus(policy: PrivateBus.systemBusPolicy(including: [shipped]), directory: directory)
        let configPath = directory.file("bgworkerd.toml")
        try """
            [daemon]
            state-directory = "\(directory.file("state"))"

            [worker.dice]
            exec = ["/bin/sleep", "1000"]
            """.write(toFile: configPath, atomically: true, encoding: .utf8)
        try await withCleanup(bus, cleanup: { await $0.stop() }) { bus in
            let daemon = try await DaemonProcess(bus: bus, configPath: configPath, arguments: ["--runner", "process"],
                                                 runtimeDirectory: directory.file("run"))
            try await withCleanup(daemon, cleanup: { await $0.process.terminate(grace: .seconds(10)) }) { _ in
                let r = try await run(Self.asNobody + [builtExecutablePath("bgworkerctl"), "--bus", bus.address, "restart", "dice"])
                #expect(r.status == 1)
                #expect(r.stderr == "bgworkerctl: `restart` needs root or membership in group `bgworker-admin`", "\(r.stderr)")
                let read = try await run(Self.asNobody + [builtExecutablePath("bgworkerctl"), "--bus", bus.address, "list"])
                #expect(read.status == 0, "reading stays open: \(read.stderr)")
            }
        }
    }

    @Test func noDaemonAndABadAddressAreOneCleanLine() async throws {
        let directory = try TemporaryDirectory(prefix: "bgw-msg")
        defer { directory.remove() }
        try await withCleanup(try await PrivateBus(directory: directory), cleanup: { await $0.stop() }) { bus in
            let r = try await run([builtExecutablePath("bgworkerctl"), "--bus", bus.socketPath, "status"])
            #expect(r.status == 1)
            #expect(r.stderr == "bgworkerctl: bgworkerd is not running on this bus (\(bus.socketPath))", "\(r.stderr)")
        }
        for address in ["foo:bar", "unix:path=/nonexistent/bus.sock"] {
            let r = try await run([builtExecutablePath("bgworkerctl"), "--bus", address, "list"])
            #expect(r.status == 1)
            #expect(r.stderr.hasPrefix("bgworkerctl: cannot connect to the \(address) bus: "), "\(r.stderr)")
            #expect(!r.stderr.contains("connectFailed") && !r.stderr.contains("\n"), "one clean line: \(r.stderr)")
        }
    }
}
