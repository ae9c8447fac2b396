import Foundation
import Glibc
import Testing
import TestSupport

/// Issue 12, "why, at a glance": the worker property StateReason.
@Suite(.timeLimit(.minutes(2)))
struct DaemonStateReasonTests {
    static let workers = execWorker("dice", ["/bin/sleep", "1000"])
    static let dicePath = "\(DaemonFixture.manager)/worker/dice"

    @Test func stateReasonFollowsEveryStateChangeWithPropertiesChanged() async throws {
        try await DaemonFixture.with(Self.workers) { fixture in
            #expect(try await fixture.property("StateReason", worker: "dice").string == "started")
            let monitor = try await fixture.monitor()
            try await fixture.call("Stop", "s", ["dice"])
            let signalled = try await monitor.stateChange(of: "dice", to: "stopped")
            let property = try await fixture.property("StateReason", worker: "dice").string
            #expect(property == signalled.reason, "as in WorkerStateChanged")
            #expect(property?.isEmpty == false)
            try await fixture.call("Disable", "s", ["dice"])
            let changed = try await DaemonStopTests.nextChange(monitor, Self.dicePath, "StateReason")
            #expect(changed?.string == "disabled", "\(String(describing: changed))")
            #expect(try await fixture.property("StateReason", worker: "dice").string == "disabled")
        }
    }

    @Test func aProgramThatVanishedSaysWhyInStateReason() async throws {
        let directory = try TemporaryDirectory(prefix: "bgw-reason")
        defer { directory.remove() }
        let program = try exitingProgram(in: directory)
        try await DaemonFixture.with(execWorker("gone", [program], extra: "restart-delay = 30")) { fixture in
            let monitor = try await fixture.monitor()
            _ = try await monitor.waitUntil(fixture, worker: "gone", is: "backoff")
            try FileManager.default.removeItem(atPath: program)
            try await fixture.call("Restart", "s", ["gone"])
            let reason = try await fixture.property("StateReason", worker: "gone").string ?? ""
            #expect(reason.contains("execve \(program): No such file or directory"), "\(reason)")
        }
    }
}

/// A script that exits at once, in `directory`: it passes validation, and a test may delete it
/// later to make the next start fail (validation refuses a program that is missing already).
func exitingProgram(in directory: TemporaryDirectory) throws -> String {
    let program = directory.file("program")
    try "#!/bin/sh\nexit 0\n".write(toFile: program, atomically: true, encoding: .utf8)
    chmod(program, 0o755)
    return program
}
