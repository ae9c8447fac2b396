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

/// Issue 12: `Logs(s name, u lines) -> a(ts)` and `log-buffer-lines` through Reload.
@Suite(.timeLimit(.minutes(2)))
struct DaemonLogsTests {
    static let chatty = shellWorker("chatty", "for i in 1 2 3 4 5; do echo line $i; done; exec sleep 1000")

    /// The texts of `Logs(name, count)` (busctl's JSON of `a(ts)`).
    static func logs(_ fixture: DaemonFixture, _ name: String, _ count: Int) async throws -> [String] {
        let reply = try await fixture.call("Logs", "su", [name, "\(count)"])
        return (reply.first?.array ?? []).compactMap { $0.array?.last?.string }
    }

    @Test func logsAnswersTheNewestLinesAndAReloadResizesWithoutARestart() async throws {
        try await DaemonFixture.with(Self.chatty) { fixture in
            // Nothing announces that the output thread took a line in: real calls, a deadline.
            let deadline = ContinuousClock.now + .seconds(10)
            while try await Self.logs(fixture, "chatty", 100).count < 5 {
                guard ContinuousClock.now < deadline else { throw TestProcessError("Logs never had 5 lines") }
            }
            #expect(try await Self.logs(fixture, "chatty", 100) == ["line 1", "line 2", "line 3", "line 4", "line 5"])
            #expect(try await Self.logs(fixture, "chatty", 2) == ["line 4", "line 5"])
            #expect(try await Self.logs(fixture, "chatty", 0) == [])
            let pid = try await fixture.worker("chatty").pid

            try fixture.writeConfiguration(Self.chatty + "log-buffer-lines = 2\n")
            try await fixture.call("Reload")
            #expect(try await Self.logs(fixture, "chatty", 100) == ["line 4", "line 5"], "the newest lines stay")
            #expect(try await fixture.worker("chatty").pid == pid, "a new buffer size restarts nothing")

            let unknown = try await fixture.dbusSend("Logs", ["string:chaty", "uint32:1"])
            #expect(unknown.output.contains("NoSuchWorker: no worker named 'chaty' (did you mean 'chatty'?)"), "\(unknown.output)")
            let nobody = try await fixture.dbusSend("Logs", ["string:chatty", "uint32:1"], asUser: 65534)
            #expect(nobody.status == 0 && nobody.output.contains("line 5"), "anyone may read: \(nobody.output)")
        }
    }
}

extension DaemonLogsTests {
    /// Bytes a worker may print that a D-Bus string cannot hold as they are (issue 12): NUL, bytes
    /// that are not UTF-8, a noncharacter (sd-bus refuses it), a line longer than the cap cut
    /// inside a character; and bytes it can hold that a terminal would obey (ANSI, a carriage return).
    static let hostile = shellWorker("hostile", [
        #"printf 'before\n'"#, #"printf 'a\000b\000\000\n\000'"#, #"printf 'caf\351\n'"#, #"printf '\033[31mred\033[0m\n'"#,
        #"printf 'cr\rin the middle\r\n'"#, #"printf 'nonchar \357\277\277\n'"#,
        #"i=0; while [ $i -lt 1500 ]; do printf '\342\202\254'; i=$((i+1)); done; printf '\n'"#,
        #"printf 'after\n'"#, "exec sleep 1000",
    ].joined(separator: "; "))

    static let hostileLines = [
        "before", "a", "b", "caf\u{FFFD}", "\u{1B}[31mred\u{1B}[0m", "cr\rin the middle", "nonchar \u{FFFD}",
        String(repeating: "€", count: 1365), String(repeating: "€", count: 135), "after",
    ]

    /// A NUL ends a line (as journald splits its stdout streams; but makes no empty one), invalid UTF-8 and noncharacters
    /// become U+FFFD, a line over 4096 bytes is cut before a character, not inside it; the rest is kept as
    /// printed. busctl and python3-dbus both get every line (before the fix: Failed, "string
    /// contains a NUL byte", for as long as the line was in the buffer).
    @Test func hostileBytesInAWorkersOutputReachEveryClientAsValidStrings() async throws {
        try await DaemonFixture.with(Self.hostile) { fixture in
            let deadline = ContinuousClock.now + .seconds(10)
            var texts: [String] = []
            while texts.last != "after" {
                let reply = try await fixture.busctl(["--json=short", "call", DaemonFixture.busName, DaemonFixture.manager,
                                                      DaemonFixture.interface, "Logs", "su", "hostile", "100"])
                if reply.status == 0 {
                    texts = (try DaemonFixture.decodeReply(reply.stdout).first?.array ?? []).compactMap { $0.array?.last?.string }
                }
                guard ContinuousClock.now < deadline else { throw TestProcessError("Logs never ended with after: \(reply)") }
            }
            #expect(texts == Self.hostileLines)

            let script = """
                import dbus, json, sys
                bus = dbus.bus.BusConnection(sys.argv[1])
                manager = dbus.Interface(bus.get_object("\(DaemonFixture.busName)", "\(DaemonFixture.manager)"), "\(DaemonFixture.interface)")
                print(json.dumps([str(text) for _, text in manager.Logs("hostile", dbus.UInt32(100))]))
                """
            let python = try await run(["/usr/bin/python3", "-c", script, fixture.bus.unixAddress])
            #expect(python.status == 0, "\(python.stderr)")
            #expect(try JSONDecoder().decode([String].self, from: Data(python.stdout.utf8)) == Self.hostileLines)
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
