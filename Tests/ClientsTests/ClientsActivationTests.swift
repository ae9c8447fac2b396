import Foundation
import Glibc
import Testing
import TestSupport

/// Issue 12, item 5: a read never starts bgworkerd. The project ships no activation file, and
/// bgworkerctl sends every call with NO_AUTO_START, so even a stale activation file left on a
/// machine (an older package) does not bring a stopped daemon back.
@Suite("bus activation never starts bgworkerd", .timeLimit(.minutes(1)))
struct ClientsActivationTests {
    @Test func aReadWithAStaleActivationFileStartsNothing() async throws {
        let directory = try TemporaryDirectory(prefix: "bgw-activation")
        defer { directory.remove() }
        chmod(directory.path, 0o755)
        let services = directory.file("services")
        mkdir(services, 0o755)
        let marker = directory.file("activated")
        // What the old package installed, with a marker instead of the daemon.
        try """
            [D-BUS Service]
            Name=org.example.BgWorker
            Exec=/bin/sh -c "echo started >> \(marker)"
            User=root
            """.write(toFile: "\(services)/org.example.BgWorker.service", atomically: true, encoding: .utf8)
        let policy = PrivateBus.permissivePolicy + "\n  <servicedir>\(services)</servicedir>\n"
        try await withCleanup(try await PrivateBus(policy: policy, directory: directory), cleanup: { await $0.stop() }) { bus in
            let asNobody = rootTestsEnabled ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : []
            for command in [["ha"], ["status"], ["list"], ["is-active", "dice"], ["show", "dice"], ["restart", "dice"]] {
                let r = try await run(asNobody + [builtExecutablePath("bgworkerctl"), "--bus", bus.address] + command)
                #expect(r.status == 1, "\(command): \(r)")
                #expect(r.stderr == "bgworkerctl: bgworkerd is not running on this bus (\(bus.address))", "\(command): \(r.stderr)")
            }
            #expect(access(marker, F_OK) != 0, "bgworkerctl activated the service")
            // The same bus does activate for a client that allows it: this is why no activation
            // file is shipped at all.
            _ = try await run(["busctl", "--timeout=3", "--address", bus.unixAddress, "call", "org.example.BgWorker", "/org/example/BgWorker",
                               "org.freedesktop.DBus.Properties", "Get", "ss", "org.example.BgWorker", "HARole"])
            #expect(access(marker, F_OK) == 0, "busctl should have activated the stale file")
        }
    }
}
