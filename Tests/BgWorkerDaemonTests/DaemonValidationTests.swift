import BgWorkerAPI
import Foundation
import Glibc
import Testing
import TestSupport

/// Issue 12: what cannot run is refused when the configuration is read (at start and at Reload),
/// located at its file, line and key, rather than found at the worker's first start.
@Suite(.timeLimit(.minutes(2)))
struct DaemonValidationTests {
    static let alpha = execWorker("alpha", ["/bin/sleep", "1000"])

    /// A worker for each check that must fail, with the line of the key that is wrong.
    static func brokenWorkers(in directory: TemporaryDirectory) throws -> String {
        // Root-owned, executable by its owner only: "nobody" may not run it.
        let secret = directory.file("secret.sh")
        try "#!/bin/sh\nexec sleep 1000\n".write(toFile: secret, atomically: true, encoding: .utf8)
        chmod(secret, 0o700)
        return """
            [worker.missing]
            exec = ["/nonexistent/program", "-v"]

            [worker.ghost]
            exec = ["/bin/sleep", "1000"]
            user = "no-such-user-bgw"

            [worker.nogroup]
            exec = ["/bin/sleep", "1000"]
            group = "no-such-group-bgw"

            [worker.nofolder]
            exec = ["/bin/sleep", "1000"]
            working-directory = "/nonexistent/folder"

            [worker.forbidden]
            exec = ["\(secret)"]
            user = "nobody"

            """
    }

    static func expectEveryProblem(_ text: String, configPath: String, secret: String) {
        // Lines in bgworkerd.toml: the fixture's [daemon] table and two blank lines come first.
        for expected in [
            "\(configPath):6: [worker.missing] 'exec[0]' /nonexistent/program: No such file or directory",
            "\(configPath):10: [worker.ghost] 'user' \"no-such-user-bgw\": no such user",
            "\(configPath):14: [worker.nogroup] 'group' \"no-such-group-bgw\": no such group",
            "\(configPath):18: [worker.nofolder] 'working-directory' /nonexistent/folder: No such file or directory",
            "\(configPath):21: [worker.forbidden] 'exec[0]' \(secret): not executable by user nobody",
        ] {
            #expect(text.contains(expected), "missing \(expected) in \(text)")
        }
    }

    @Test func bgworkerdRefusesToStartWithAWorkerThatCannotRun() async throws {
        try #require(geteuid() == 0, "the unexecutable program needs root to own it and a user to refuse")
        let scratch = try TemporaryDirectory(prefix: "bgw-validate")
        defer { scratch.remove() }
        chmod(scratch.path, 0o755)
        let broken = try Self.brokenWorkers(in: scratch)
        try await DaemonFixture.with(broken + Self.alpha, start: false) { fixture in
            let result = try await run([builtExecutablePath("bgworkerd"), "--config", fixture.configPath, "--bus",
                                        fixture.bus.unixAddress, "--runner", "process"],
                                       environment: ["RUNTIME_DIRECTORY": fixture.directory.file("run")])
            #expect(result.status == 1, "\(result.stderr)")
            Self.expectEveryProblem(result.stderr, configPath: fixture.configPath, secret: scratch.file("secret.sh"))
            let owner = try await fixture.busctl(["status", DaemonFixture.busName])
            #expect(owner.status != 0, "nobody took the name")
        }
    }

    @Test func aReloadWithAWorkerThatCannotRunChangesNothing() async throws {
        try #require(geteuid() == 0, "the unexecutable program needs root to own it and a user to refuse")
        let scratch = try TemporaryDirectory(prefix: "bgw-validate")
        defer { scratch.remove() }
        chmod(scratch.path, 0o755)
        try await DaemonFixture.with(Self.alpha) { fixture in
            let before = try await fixture.listWorkers()
            #expect(before.map(\.state) == ["running"])
            // alpha's definition changes too: an accepted reload would restart it.
            try fixture.writeConfiguration(
                try Self.brokenWorkers(in: scratch) + execWorker("alpha", ["/bin/sleep", "1001"]))
            let result = try await fixture.dbusSend("Reload")
            #expect(result.status != 0)
            #expect(result.output.contains("Error \(BgWorkerBus.ErrorName.invalidConfig)"), "\(result.output)")
            Self.expectEveryProblem(result.output, configPath: fixture.configPath, secret: scratch.file("secret.sh"))
            #expect(try await fixture.listWorkers() == before, "the old configuration is kept, alpha untouched")

            // Fixed: the same reload goes through.
            try fixture.writeConfiguration(execWorker("alpha", ["/bin/sleep", "1001"]))
            #expect(try await fixture.dbusSend("Reload").status == 0)
        }
    }

    @Test func anUnknownWorkerNameGetsTheClosestOneSuggested() async throws {
        try await DaemonFixture.with(Self.alpha + execWorker("db-sync", ["/bin/sleep", "1000"])) { fixture in
            let restart = try await fixture.dbusSend("Restart", ["string:db-synk"])
            #expect(restart.output.contains(
                "Error \(BgWorkerBus.ErrorName.noSuchWorker): no worker named 'db-synk' (did you mean 'db-sync'?)"),
                "\(restart.output)")
            let get = try await fixture.dbusSend("GetWorker", ["string:alhpa"])
            #expect(get.output.contains("no worker named 'alhpa' (did you mean 'alpha'?)"), "\(get.output)")
            let far = try await fixture.dbusSend("Stop", ["string:backup"])
            #expect(far.output.contains("no worker named 'backup'\n") || far.output.hasSuffix("no worker named 'backup'"),
                    "nothing close, no suggestion: \(far.output)")
        }
    }
}
